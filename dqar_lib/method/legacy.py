"""The flat configs before 0.2 (40 fields, modes switched by `use_*` flags), read into today's groups.

Manifests in data/ store flat dicts, and the short names (`tau`, `cache_mode`, `forecast_order`...) stay the
handiest way to change one field (`DQARConfig.preset("gates", tau=0.9)`, the CLI's `--set tau=0.9`). `from_flat`
applies the old rule's precedence once: off, always, a static plan, a static period, the policy, the gates or the
change gate, else a streak profile. A flat field the chosen decision does not read is dropped when a whole old
dict is read (the old rule ignored it too), and refused when it is set by name (`apply_flat`).
"""

from __future__ import annotations

import math

from .modes import Always, Change, Gates, LayerSchedule, Off, Period, Plan, Policy, Profile
from .serving import Serve, Store

FLAT_DEFAULTS: dict = dict(
    enabled=True, granularity="block", warmup=0.2, use_entropy_gate=True, tau=0.92, tau_slope=0.0, p_ref=77,
    use_snr_gate=True, snr_lo=0.25, snr_hi=math.inf, use_change_gate=False, delta=0.1, change_scope="layer",
    change_accumulate=False, max_reuse_streak=2, max_reuse_streak_end=None, end_computes=0, streak_profile=None,
    use_schedule=True, schedule_depth_start=0.5, schedule_depth_end=1.0, static_plan=None, static_period=0,
    use_policy=False, policy_path=None, policy_threshold=0.5, cache_mode="int8_channel", cache_calibration=None,
    cache_calib_dynamic=True, forecast_order=0, forecast_in="step", forecast_weights=None, cache_budget_bytes=None,
    cfg_share=False, cfg_share_start=0.5, cfg_layout="cond_first", entropy_rows=16, entropy_heads=4,
    collect_stats=True, always_reuse=False)
"""The flat fields and their defaults before 0.2 (that version's `DQARConfig()`, the "gates" preset)."""

FLAT_TYPES: dict[str, str] = {k: {bool: "bool", int: "int", float: "float", str: "str"}.get(type(v), "")
                              for k, v in FLAT_DEFAULTS.items()}
FLAT_TYPES.update(policy_path="str | None", cache_calibration="str | None", max_reuse_streak_end="int | None",
                  cache_budget_bytes="int | None", streak_profile="tuple | None", static_plan="tuple | None",
                  forecast_weights="tuple | None")

# flat name -> (group, field) in today's config; the decision's fields are read from whichever decision it holds
_PATHS = dict(
    warmup=("decide", "warmup"), end_computes=("decide", "end_computes"), tau=("decide", "tau"),
    tau_slope=("decide", "tau_slope"), p_ref=("decide", "p_ref"), snr_lo=("decide", "snr_lo"),
    snr_hi=("decide", "snr_hi"), delta=("decide", "delta"), change_scope=("decide", "scope"),
    change_accumulate=("decide", "accumulate"), max_reuse_streak=("decide", "max_streak"),
    max_reuse_streak_end=("decide", "max_streak_end"), streak_profile=("decide", "streak_profile"),
    schedule_depth_start=("schedule", "depth_start"), schedule_depth_end=("schedule", "depth_end"),
    static_plan=("decide", "plan"), static_period=("decide", "period"), policy_path=("decide", "path"),
    policy_threshold=("decide", "threshold"), cache_mode=("store", "mode"), cache_calibration=("store", "calibration"),
    cache_calib_dynamic=("store", "dynamic_scale"), cache_budget_bytes=("store", "budget_bytes"),
    forecast_order=("serve", "order"), forecast_in=("serve", "abscissa"), forecast_weights=("serve", "weights"))
_TOP = ("granularity", "cfg_layout", "entropy_rows", "entropy_heads", "collect_stats")


def check_names(flat: dict) -> dict:
    unknown = sorted(set(flat) - set(FLAT_DEFAULTS))
    if unknown:
        raise ValueError(f"unknown DQARConfig field(s) {unknown}; known flat fields: "
                         f"{', '.join(sorted(FLAT_DEFAULTS))}")
    return flat


def _plan(rows) -> tuple:
    return tuple(tuple(bool(v) for v in row) for row in rows)


def decision_fields(d: dict) -> dict:
    """A decision's fields as JSON gives them back (lists) in the types its class takes (tuples)."""
    d = dict(d)
    if d.get("plan") is not None:
        d["plan"] = _plan(d["plan"])
    if d.get("streak_profile") is not None:
        d["streak_profile"] = tuple(tuple(e) for e in d["streak_profile"])  # validated by the class, not cast
    if isinstance(d.get("schedule"), dict):
        d["schedule"] = LayerSchedule(**d["schedule"])
    if d.get("snr_hi") is not None:
        d["snr_hi"] = float(d["snr_hi"])  # json writes inf as Infinity, and an int bound as an int
    return d


def serve_fields(d: dict) -> dict:
    d = dict(d)
    if d.get("weights") is not None:
        d["weights"] = tuple(None if r is None else tuple(float(w) for w in r) for r in d["weights"])
    return d


def _decision(f: dict):
    """The old rule's precedence, once: what a complete flat dict decides by."""
    if not f["enabled"]:
        return Off()
    if f["always_reuse"]:
        return Always()
    if f["static_plan"] is not None:
        return Plan(_plan(f["static_plan"]))
    timed = dict(warmup=f["warmup"], end_computes=f["end_computes"])
    if f["static_period"]:
        return Period(period=f["static_period"], **timed)
    profile = None if f["streak_profile"] is None else decision_fields({"streak_profile": f["streak_profile"]})[
        "streak_profile"]
    capped = dict(timed, max_streak=f["max_reuse_streak"], streak_profile=profile,
                  max_streak_end=None if profile is not None else f["max_reuse_streak_end"],
                  schedule=LayerSchedule(f["schedule_depth_start"], f["schedule_depth_end"]) if f["use_schedule"]
                  else None)
    if f["use_policy"]:
        return Policy(path=f["policy_path"] or "", threshold=f["policy_threshold"], **capped)
    gated = f["use_entropy_gate"] or f["use_snr_gate"]
    if f["use_change_gate"]:
        if gated:
            raise ValueError("a flat config with use_change_gate and the entropy or SNR gate: the change gate decides "
                             "alone (set use_entropy_gate=False and use_snr_gate=False)")
        return Change(delta=f["delta"], scope=f["change_scope"], accumulate=f["change_accumulate"], **capped)
    if f["change_accumulate"]:
        raise ValueError("DQARConfig.change_accumulate=True is invalid: it shapes the change gate's signal, and "
                         "use_change_gate is False")
    if gated:
        return Gates(tau=f["tau"] if f["use_entropy_gate"] else None, tau_slope=f["tau_slope"] if
                     f["use_entropy_gate"] else 0.0, p_ref=f["p_ref"] if f["use_entropy_gate"] else 77,
                     snr_lo=f["snr_lo"] if f["use_snr_gate"] else None,
                     snr_hi=float(f["snr_hi"]) if f["use_snr_gate"] else math.inf, **capped)
    return Profile(**capped)


def from_flat(f: dict) -> dict:
    """Today's config fields (`DQARConfig(**fields)`) from a complete flat dict (every name of FLAT_DEFAULTS)."""
    decide = _decision(f)
    serve = Serve(**serve_fields(dict(order=f["forecast_order"], abscissa=f["forecast_in"],
                                      weights=f["forecast_weights"])))
    csb = f["cache_mode"] == "csb"
    store = Store(mode=f["cache_mode"], calibration=f["cache_calibration"] if csb else None,
                  dynamic_scale=f["cache_calib_dynamic"] if csb else True, budget_bytes=f["cache_budget_bytes"])
    share = f["cfg_share_start"] if f["cfg_share"] else None
    return dict(decide=decide, serve=serve, store=store, cfg_share_from=share, **{k: f[k] for k in _TOP})


def _owner(cfg, group: str):
    if group == "decide":
        return cfg.decide
    if group == "schedule":
        return getattr(cfg.decide, "schedule", None)
    return getattr(cfg, group)


def to_flat(cfg) -> dict:
    """The flat dict `from_flat` reads back into `cfg`'s fields (those its decision ignores at the old defaults)."""
    d, f = cfg.decide, dict(FLAT_DEFAULTS, **{k: getattr(cfg, k) for k in _TOP})
    for name, (group, attr) in _PATHS.items():
        owner = _owner(cfg, group)
        if owner is not None and getattr(owner, attr, None) is not None:
            f[name] = getattr(owner, attr)
    gates = cfg.kind == "gates"
    f.update(enabled=cfg.enabled, always_reuse=cfg.kind == "always", use_policy=cfg.kind == "policy",
             use_change_gate=cfg.kind == "change", use_entropy_gate=gates and d.tau is not None,
             use_snr_gate=gates and d.snr_lo is not None, use_schedule=getattr(d, "schedule", None) is not None,
             cfg_share=cfg.cfg_share_from is not None)
    if cfg.cfg_share_from is not None:
        f["cfg_share_start"] = cfg.cfg_share_from
    return f


_FLAGS = ("enabled", "always_reuse", "use_policy", "use_change_gate", "use_entropy_gate", "use_snr_gate",
          "use_schedule", "cfg_share")


def _reads(cfg, name: str, value) -> bool:
    """Whether `cfg` reads the flat field `name` and holds `value` there."""
    if name in _FLAGS:
        return to_flat(cfg)[name] == value
    if name == "cfg_share_start":
        return cfg.cfg_share_from is not None
    if name in _TOP:
        return True
    group, attr = _PATHS[name]
    owner = _owner(cfg, group)
    if owner is None or not hasattr(owner, attr):
        return False
    return value is None or isinstance(value, (list, tuple)) or to_flat(cfg)[name] == value


def apply_flat(cfg, changes: dict):
    """`cfg` with flat fields changed; a change the resulting config would not read is a ValueError naming it."""
    check_names(changes)
    new = type(cfg)(**from_flat({**to_flat(cfg), **changes}))
    for name, value in changes.items():
        if not _reads(new, name, value):
            raise ValueError(f"DQARConfig: {name}={value!r} is not read by a config that decides by {new.kind!r} "
                             f"({type(new.decide).__name__}); set what decides first (e.g. decide=Gates(...))")
    return new


def parse_value(name: str, kind: str, text: str, pair: str):
    """A command-line value read as the field's type."""
    if "None" in kind and text.lower() == "none":
        return None
    base = kind.replace("| None", "").strip()
    try:
        if base == "bool":
            if text.lower() not in ("true", "false", "1", "0"):
                raise ValueError
            return text.lower() in ("true", "1")
        if base in ("int", "float"):
            return {"int": int, "float": float}[base](text)
        if base == "str":
            return text
    except ValueError:
        raise ValueError(f"override {pair!r}: {name} takes a {kind}, and {text!r} is not one") from None
    raise ValueError(f"override {pair!r}: {name} ({kind}) cannot be set from the command line")
