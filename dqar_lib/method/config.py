"""DQARConfig: what decides, how a reuse is served, how it is stored; documented, validated, with named presets.

For example::

    DQARConfig()                                         # the "dqar" preset: a streak profile, quadratic forecast
    DQARConfig.preset("gates", tau=0.9)                  # a preset with a field changed (by its short name)
    DQARConfig(decide=Gates(tau=0.9), granularity="block", serve=Serve(order=0))
    cfg.replace(**{"decide.tau": 0.9, "store.mode": "fp16"})   # dotted names, as the CLI's --set takes them

What decides is one explicit choice (`dqar_lib.method.modes`: off, always, plan, period, profile, gates, change,
policy); `Serve` says how a reused tensor is served (as stored, or forecast from the last computes); `Store` how
the cache keeps it. Configs written before the groups existed (a flat dict of 40 fields in data/ manifests) still
load through `from_dict` (`dqar_lib.method.legacy`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from . import legacy
from .files import DEFAULT_CACHE_CALIBRATION, DEFAULT_FORECAST_POLICY, DEFAULT_POLICY
from .modes import MODES, Always, Change, Decision, Gates, LayerSchedule, Off, Period, Plan, Policy, Profile
from .serving import Serve, Store

GRANULARITIES = ("attn", "kv", "block", "stack")
CFG_LAYOUTS = ("cond_first", "cond_second")


@dataclass(frozen=True)
class DQARConfig:
    """What DQAR may reuse, when, and how. The defaults are the `"dqar"` preset, what `apply_dqar(model)` runs."""

    decide: Decision = field(default_factory=lambda: Profile(end_computes=1, max_streak=1,
                                                             streak_profile=((0.0, 1), (0.2, 2), (0.9, 1))))
    """What decides (one of `dqar_lib.method.modes`: Off, Always, Plan, Period, Profile, Gates, Change, Policy)."""
    serve: Serve = field(default_factory=lambda: Serve(order=2))
    """How a reuse is served: as stored or forecast."""
    store: Store = field(default_factory=lambda: Store(mode="delta"))
    """How the cache keeps what it stores."""
    granularity: str = "stack"
    """What one reuse skips: "stack" the whole block stack (one cache entry, the residual from the first block's
    input to the last block's output, the first layer's decision for all); "block" each transformer block's residual
    (attention + MLP); "attn" the self-attention output; "kv" K/V only (the attention itself still runs)."""
    cfg_share_from: float | None = None
    """CFG branch sharing: from this progress on, steps that compute run each block on the conditional half and the
    unconditional half takes its output; None: no sharing."""
    cfg_layout: str = "cond_first"
    """Where the conditional half sits in a CFG batch: DiT pipelines put it first, PixArt second."""
    collect_stats: bool = False
    """Measure H_t, SNR_t and ||x_t|| on every step for the trace, even where they decide nothing."""
    entropy_rows: int = 16
    """Query rows sampled per head to estimate H_t (never a second full attention)."""
    entropy_heads: int = 4
    """Heads sampled for H_t."""

    def __post_init__(self):
        def bad(name, why):
            raise ValueError(f"DQARConfig.{name}={getattr(self, name)!r} is invalid: {why}")

        if not isinstance(self.decide, tuple(MODES.values())):
            bad("decide", f"expected one of {', '.join(c.__name__ for c in MODES.values())}")
        if not isinstance(self.serve, Serve):
            bad("serve", "expected a Serve")
        if not isinstance(self.store, Store):
            bad("store", "expected a Store")
        if self.granularity not in GRANULARITIES:
            bad("granularity", f"expected one of {GRANULARITIES}")
        if self.cfg_layout not in CFG_LAYOUTS:
            bad("cfg_layout", f"expected one of {CFG_LAYOUTS}")
        if self.cfg_share_from is not None and (isinstance(self.cfg_share_from, bool)
                                                or not 0.0 <= self.cfg_share_from <= 1.0):
            bad("cfg_share_from", "expected None or a progress in [0, 1]")
        if self.entropy_rows <= 0 or self.entropy_heads <= 0:
            bad("entropy_rows" if self.entropy_rows <= 0 else "entropy_heads", "expected > 0")
        if self.serve.order and self.granularity == "kv":
            bad("serve", "forecasting serves an output (granularity 'attn', 'block' or 'stack'), not K/V")
        if getattr(self.decide, "schedule", None) is not None and self.granularity == "stack":
            bad("decide", "the layer schedule decides per layer, and granularity 'stack' reuses every layer at once "
                          "(set decide.schedule=None)")
        if self.cfg_share_from is not None and self.granularity in ("stack", "kv"):
            bad("cfg_share_from", "CFG sharing shares a block's or attention's output (granularity 'attn' or "
                                  "'block'), not a whole-stack skip or K/V")

    # ---- read-only views ------------------------------------------------------------------
    @property
    def kind(self) -> str:
        """What decides: "off", "always", "plan", "period", "profile", "gates", "change" or "policy"."""
        return self.decide.kind

    @property
    def enabled(self) -> bool:
        """False for the "off" decision: attached but never reusing (bit-identical outputs)."""
        return self.decide.kind != "off"

    @property
    def warmup(self) -> float:
        """The decision's warmup (0 for the kinds that read no progress)."""
        return getattr(self.decide, "warmup", 0.0)

    @property
    def history(self) -> int:
        """How many computes each cache entry keeps (`Serve.history`)."""
        return self.serve.history

    def changes(self, base: DQARConfig | None = None) -> dict:
        """The dotted fields where this config differs from `base` (default `DQARConfig()`), JSON-ready: a decision of
        another kind gives `"decide.kind"` and its fields that differ from that kind's defaults."""
        base = base or DQARConfig()
        out = {}
        for name in ("decide", "serve", "store"):
            mine, theirs = getattr(self, name), getattr(base, name)
            ref = {f.name: getattr(theirs, f.name) for f in dataclasses.fields(theirs)}
            if type(mine) is not type(theirs):  # another kind: against its class's defaults
                out[f"{name}.kind"], ref = mine.kind, {f.name: f.default for f in dataclasses.fields(mine)}
            out |= {f"{name}.{k}": v for k, v in dataclasses.asdict(mine).items()
                    if v != (dataclasses.asdict(ref[k]) if dataclasses.is_dataclass(ref[k]) else ref[k])}
        return out | {k: v for k, v in dataclasses.asdict(self).items()
                      if k not in ("decide", "serve", "store") and v != getattr(base, k)}

    # ---- building ---------------------------------------------------------------------------
    @classmethod
    def preset(cls, name: str, **overrides) -> DQARConfig:
        """A named preset, optionally with fields changed (`replace`): `DQARConfig.preset("gates", tau=0.9)`.

        Presets are pure: the same name always gives the same config (no file is read)."""
        if name not in PRESETS:
            raise ValueError(f"unknown DQAR preset {name!r}; known presets: {', '.join(PRESETS)}")
        return PRESETS[name].replace(**overrides) if overrides else PRESETS[name]

    def replace(self, **changes) -> DQARConfig:
        """This config with fields changed. A name is a field (`decide=Gates(...)`), a dotted path into a group
        (`"decide.tau"`, `"store.mode"`), or a short name of the flat configs before 0.2 (`tau`, `cache_mode`,
        `forecast_order`, `use_policy`...). A short name may switch what decides (`static_plan=...` makes a Plan;
        fields the new choice shares, such as warmup, carry over); one the resulting config does not read is a
        ValueError naming it."""
        own = {k: v for k, v in changes.items() if k in _FIELDS}
        cfg = dataclasses.replace(self, **own) if own else self
        flat = {k: v for k, v in changes.items() if k not in own and "." not in k}
        if flat:
            cfg = legacy.apply_flat(cfg, flat)
        for path, v in changes.items():
            if "." in path:
                cfg = _set_path(cfg, path, v)
        return cfg

    def to_dict(self) -> dict:
        """JSON-ready: the groups as dicts, `decide` tagged with its `kind` (snr_hi may be inf: json's Infinity)."""
        d = dataclasses.asdict(self)
        d["decide"] = {"kind": self.decide.kind, **d["decide"]}
        return d

    @classmethod
    def from_dict(cls, fields: dict) -> DQARConfig:
        """The config `to_dict` wrote; a flat dict of the fields before 0.2 (data/ manifests) loads too, its missing
        fields at that version's defaults. An unknown field name is a ValueError naming it."""
        if "decide" not in fields:
            return cls(**legacy.from_flat({**legacy.FLAT_DEFAULTS, **legacy.check_names(fields)}))
        unknown = sorted(set(fields) - _FIELDS)
        if unknown:
            raise ValueError(f"unknown DQARConfig field(s) {unknown}; known fields: {', '.join(sorted(_FIELDS))}")
        d = dict(fields)
        dec = dict(d["decide"])
        kind = dec.pop("kind", None)
        if kind not in MODES:
            raise ValueError(f"DQARConfig.decide has kind {kind!r}; expected one of {', '.join(MODES)}")
        d["decide"] = MODES[kind](**legacy.decision_fields(dec))
        d["serve"] = Serve(**legacy.serve_fields(d.get("serve", {})))
        d["store"] = Store(**d.get("store", {}))
        return cls(**d)


def _set_path(cfg, path: str, value):
    """`cfg` with the field at a dotted path ("decide.tau", "decide.schedule.depth_start") set to `value`."""
    head, _, rest = path.partition(".")
    if not dataclasses.is_dataclass(cfg) or head not in {f.name for f in dataclasses.fields(cfg)}:
        owner = type(cfg).__name__ if dataclasses.is_dataclass(cfg) else repr(cfg)
        raise ValueError(f"{path!r} names no field of {owner}" + (
            f" (it decides by {cfg.kind!r}; its fields: {', '.join(f.name for f in dataclasses.fields(cfg))})"
            if hasattr(cfg, "kind") and not isinstance(cfg, DQARConfig) else ""))
    inner = getattr(cfg, head)
    if rest and inner is None and head == "schedule":
        inner = LayerSchedule()
    return dataclasses.replace(cfg, **{head: _set_path(inner, rest, value) if rest else value})


def parse_overrides(pairs: list[str]) -> dict:
    """`["tau=0.9", "decide.snr_hi=inf", "store.mode=fp16", "policy_path=none"]` as typed config fields.

    A name is a short name (`tau`, `cache_mode`, `cfg_share`, the flat fields before 0.2) or a dotted path
    (`decide.tau`, `serve.order`, `store.mode`, `granularity`). Each value is read as its field's type (bool:
    true/false, int, float, str; "none" where the field takes None); a malformed pair, an unknown name or an
    unreadable value is a ValueError naming it. The values are validated when the config is built."""
    out = {}
    for pair in pairs:
        name, eq, text = pair.partition("=")
        name, text = name.strip(), text.strip()
        if not eq or not name:
            raise ValueError(f"override {pair!r} is not of the form name=value (e.g. tau=0.9)")
        kind = _TYPES.get(name) or legacy.FLAT_TYPES.get(name)
        if kind is None:
            raise ValueError(f"override {pair!r} names no DQARConfig field; known names: "
                             f"{', '.join(sorted(set(_TYPES) | set(legacy.FLAT_TYPES)))}")
        out[name] = legacy.parse_value(name, kind, text, pair)
    return out


def _field_types() -> dict[str, str]:
    """Every settable dotted name -> its type's text, over every decision class."""
    out = {f.name: str(f.type) for f in dataclasses.fields(DQARConfig) if f.name not in ("decide", "serve", "store")}
    for group, classes in (("serve", [Serve]), ("store", [Store]), ("decide", list(MODES.values()))):
        for c in classes:
            out.update({f"{group}.{f.name}": str(f.type) for f in dataclasses.fields(c) if f.name != "schedule"})
    out.update({f"decide.schedule.{f.name}": str(f.type) for f in dataclasses.fields(LayerSchedule)})
    return out


_FIELDS = frozenset(f.name for f in dataclasses.fields(DQARConfig))
_TYPES = _field_types()

# The presets, one line each; the measured numbers behind each choice are in the book (chapters 6 and 9).
_STACK = dict(granularity="stack", serve=Serve(order=2), store=Store(mode="delta"))
_ATTN_GATES = Gates(warmup=0.2, schedule=LayerSchedule())
PRESETS: dict[str, DQARConfig] = {
    # attached, never reuses: bit-identical to the model without DQAR
    "off": DQARConfig(decide=Off(), granularity="block", serve=Serve(), store=Store()),
    # reuse whenever a cache entry exists: an upper bound on savings, a lower bound on quality
    "always": DQARConfig(decide=Always(), granularity="attn", serve=Serve(), store=Store(mode="fp32"),
                         collect_stats=True),
    # DiTFastAttn-style static rule: after warmup, every layer reuses its attention output every second step
    "static": DQARConfig(decide=Period(warmup=0.2), granularity="attn", serve=Serve(), store=Store(mode="fp16"),
                          collect_stats=True),
    # the proposal: entropy + SNR gates + layer schedule, INT8 cache, whole blocks (the gates' own ablations follow)
    "gates": DQARConfig(decide=_ATTN_GATES, granularity="block", serve=Serve(), store=Store(), collect_stats=True),
    "entropy": DQARConfig(decide=Gates(warmup=0.2, snr_lo=None), granularity="block", serve=Serve(), store=Store(),
                          collect_stats=True),
    "snr": DQARConfig(decide=Gates(warmup=0.2, tau=None), granularity="block", serve=Serve(), store=Store(),
                      collect_stats=True),
    # the gates on attention outputs in the CSB-balanced INT8 cache that notebooks/04_quantization calibrates
    "dqar_csb": DQARConfig(decide=_ATTN_GATES, granularity="attn", serve=Serve(), collect_stats=True,
                           store=Store(mode="csb", calibration=DEFAULT_CACHE_CALIBRATION)),
    # forecast reuse of the whole stack, front-loaded: at most 1 reuse in a row after warmup, growing to 3
    "forecast": DQARConfig(decide=Profile(warmup=0.2, end_computes=2, max_streak=1, max_streak_end=3),
                           **dict(_STACK, serve=Serve(order=1))),
    # the default: the stack forecast from its last three computes on a streak profile (every second step early
    # and late, where the sample forms and where fine detail forms; two reuses a compute in the middle)
    "dqar": DQARConfig(),
    # the learned MLP policy (chapter 5) on attention outputs, the reuse it was trained on
    "policy": DQARConfig(decide=Policy(warmup=0.2, path=DEFAULT_POLICY), granularity="attn", serve=Serve(),
                         store=Store(), collect_stats=True),
    # the learned forecast policy (chapter 5) in place of the streak profile, at most 2 reuses in a row (its labels'
    # streaks); its threshold is the knob
    "dqar_policy": DQARConfig(decide=Policy(end_computes=1, path=DEFAULT_FORECAST_POLICY), **_STACK),
}
__all__ = ["DQARConfig", "Serve", "Store", "PRESETS", "Off", "Always", "Plan", "Period", "Profile", "Gates", "Change",
           "Policy", "LayerSchedule", "parse_overrides"]
