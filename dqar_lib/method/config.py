"""DQARConfig: every knob of the method, documented, validated on construction, with named presets."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from .files import DEFAULT_CACHE_CALIBRATION, DEFAULT_FORECAST_POLICY, DEFAULT_POLICY

GRANULARITIES = ("attn", "kv", "block", "stack")
CACHE_MODES = ("fp32", "fp16", "int8_tensor", "int8_channel", "mixed", "csb", "delta")
CFG_LAYOUTS = ("cond_first", "cond_second")
FORECAST_ORDERS = (0, 1, 2)
FORECAST_ABSCISSAE = ("step", "t")


@dataclass(frozen=True)
class DQARConfig:
    """What DQAR may reuse, and when. Defaults are the `"gates"` preset's (the proposal's gates); the `"dqar"`
    preset, what `apply_dqar(model)` runs, is the forecast configuration measured best in notebooks/09_forecast.

    A block reuses at step s only if every enabled rule allows it, checked in this order:
    a cache entry exists, the step is past `warmup`, the layer schedule admits the layer,
    the entropy gate H_t < tau(p), the SNR gate snr_lo <= SNR_t <= snr_hi, and fewer than
    `max_reuse_streak` consecutive reuses so far.
    """

    enabled: bool = True
    """Master switch. False: attached but never reuses (the `"off"` preset); outputs are bit-identical."""
    granularity: str = "block"
    """"block" reuses the residual the whole transformer block added (attention + MLP) at an earlier step;
    "attn" reuses the self-attention output (skips the whole attention); "kv" reuses K/V only. Block is the
    default: attention is only part of a DiT block's FLOPs, so attention reuse saves only that part
    (notebooks/06_schedule_ablations measures both); "stack" reuses the whole block stack at once (first layer's
    decision for every layer): one cache entry, the residual from the first block's input to the last block's
    output, and one forecast a step, where "block" serves one per layer (the same values under a shared plan,
    since a forecast is linear in its computes, at 1/L of the work)."""
    warmup: float = 0.2
    """Fraction of the steps at the start that always recompute (the sample is still forming)."""
    use_entropy_gate: bool = True
    tau: float = 0.92
    """Entropy threshold for class labels (normalised entropy lies in [0, 1]); reuse only if H_t < tau(p)."""
    tau_slope: float = 0.0
    """tau(p) = tau + tau_slope * log(p / p_ref) for text prompts of p tokens; 0 keeps tau constant."""
    p_ref: int = 77
    use_snr_gate: bool = True
    snr_lo: float = 0.25
    """Lower SNR bound: SNR_t = ||x0||^2 / (||x_t - x0||^2 + eps) must be at least this."""
    snr_hi: float = math.inf
    """Upper SNR bound."""
    use_change_gate: bool = False
    delta: float = 0.1
    """Change gate: reuse only while the relative L1 change of the layer's input since it last computed stays
    below delta (measured in the hook where every other rule passed: one host read per layer and step)."""
    change_scope: str = "layer"
    """"layer": each layer measures its own input; "stack": the first layer's change decides for every layer
    (one host read per step, a whole-stack skip as in SeaCache)."""
    change_accumulate: bool = False
    """Change gate: False measures the input against its value at the layer's last compute; True sums the relative
    L1 change between consecutive steps since that compute, as TeaCache and SeaCache do (the input is then read on
    every step, one host read per layer and step, or per step with change_scope "stack")."""
    max_reuse_streak: int = 2
    """At most this many consecutive reuses per layer before it must recompute (0: never reuse)."""
    max_reuse_streak_end: int | None = None
    """If set, the cap on consecutive reuses grows linearly with progress, from `max_reuse_streak` right after
    warmup to this at the last step: computes are front-loaded (early steps decide the sample)."""
    end_computes: int = 0
    """The last `end_computes` steps always compute (counted on the scheduler's timesteps; needs a scheduler)."""
    streak_profile: tuple[tuple[float, int], ...] | None = None
    """Caps on consecutive reuses by progress, in place of max_reuse_streak(_end): ((s_1, c_1), (s_2, c_2), ...)
    caps streaks at c_k from progress s_k on (s_1 < s_2 < ... in [0, 1]; before s_1: max_reuse_streak). E.g.
    ((0, 1), (0.2, 2), (0.9, 1)): every second step early, two reuses a compute in the middle, every second at
    the end (the shape of the plans notebooks/09 measures best; the sample's end is as sensitive as its start)."""
    use_schedule: bool = True
    schedule_depth_start: float = 0.5
    """Layer schedule: right after warmup, the shallowest `schedule_depth_start` fraction of blocks may reuse ..."""
    schedule_depth_end: float = 1.0
    """... growing linearly to `schedule_depth_end` at the last step (shallow early, deep late)."""
    static_plan: tuple[tuple[bool, ...], ...] | None = None
    """A fixed (steps x layers) plan (DiTFastAttn-style); when set it replaces the gates and the schedule."""
    static_period: int = 0
    """If > 0 and no static_plan: the static preset's rule, reuse every layer on every `static_period`-th step."""
    use_policy: bool = False
    policy_path: str | None = None
    """A trained MLP policy (data/policy/...); p_reuse >= policy_threshold replaces the entropy/SNR gates."""
    policy_threshold: float = 0.5
    cache_mode: str = "int8_channel"
    """How cached tensors are stored: fp32, fp16, int8_tensor, int8_channel, mixed (K fp16, V/out int8),
    csb (INT8 with PTQ4DiT-style channel balancing from `cache_calibration`), or delta (for forecasting: each
    layer's oldest kept compute in fp16, the later ones as per-channel INT8 differences; fp16 without forecasting).
    A forecast history in int8_tensor / int8_channel is delta-coded too, its base in INT8."""
    cache_calibration: str | None = None
    """The calibration file for cache_mode="csb" (data/calibration/, fitted in notebooks/04_quantization)."""
    cache_calib_dynamic: bool = True
    """csb: take the per-tensor scale from each stored tensor (True) or the calibrated static scale (False)."""
    forecast_order: int = 0
    """How a reused tensor is served: 0 as it was stored; 1 or 2 extrapolated (dqar_lib.method.forecast) from that
    layer's last 2 or 3 computes, each kept in `cache_mode` (fewer while fewer exist). Not for "kv"."""
    forecast_in: str = "step"
    """The forecast's abscissa: "step" (the step index) or "t" (the scheduler's timestep, which DPM-Solver spaces
    unevenly)."""
    forecast_weights: tuple[tuple[float, ...] | None, ...] | None = None
    """Per step, fitted weights (oldest first) of the layer's last computes that a reuse at that step is served as,
    in place of the forecast (`dqar_lib.fitting.plan_fit` fits them with a static plan); None, or a None row:
    the forecast of `forecast_order`."""
    cache_budget_bytes: int | None = None
    """Refuse to store past this many bytes (the layer then recomputes); None: no limit."""
    cfg_share: bool = False
    """CFG branch sharing: the unconditional half takes the conditional half's attention output."""
    cfg_share_start: float = 0.5
    """Fraction of the steps after which CFG sharing applies on steps that recompute."""
    cfg_layout: str = "cond_first"
    """Where the conditional half sits in a CFG batch: DiT pipelines put it first, PixArt second."""
    entropy_rows: int = 16
    """Query rows sampled per head to estimate H_t (never a second full attention)."""
    entropy_heads: int = 4
    """Heads sampled for H_t."""
    collect_stats: bool = True
    """Measure H_t, SNR_t and ||x_t|| on every step for the trace, even where they decide nothing."""
    always_reuse: bool = False
    """Reuse whenever a valid cache entry exists (the `"always"` preset); skips gates and schedule."""

    def __post_init__(self):
        def bad(name, why):
            raise ValueError(f"DQARConfig.{name}={getattr(self, name)!r} is invalid: {why}")

        if self.granularity not in GRANULARITIES:
            bad("granularity", f"expected one of {GRANULARITIES}")
        if self.cache_mode not in CACHE_MODES:
            bad("cache_mode", f"expected one of {CACHE_MODES}")
        if self.cfg_layout not in CFG_LAYOUTS:
            bad("cfg_layout", f"expected one of {CFG_LAYOUTS}")
        for name in ("warmup", "schedule_depth_start", "schedule_depth_end", "cfg_share_start", "policy_threshold"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and 0.0 <= v <= 1.0):
                bad(name, "expected a number in [0, 1]")
        if not (isinstance(self.tau, (int, float)) and 0.0 <= self.tau <= 1.0):
            bad("tau", "normalised entropy lies in [0, 1], so tau must too")
        if not math.isfinite(self.tau_slope):
            bad("tau_slope", "expected a finite number")
        if self.p_ref <= 0:
            bad("p_ref", "expected a positive token count")
        if not (isinstance(self.snr_lo, (int, float)) and math.isfinite(self.snr_lo) and self.snr_lo >= 0):
            bad("snr_lo", "expected a finite number >= 0")
        if not (isinstance(self.snr_hi, (int, float)) and not math.isnan(self.snr_hi) and self.snr_hi >= 0):
            bad("snr_hi", "expected a number >= 0 (math.inf for no upper bound)")
        if self.snr_lo > self.snr_hi:
            raise ValueError(f"DQARConfig SNR range is empty: snr_lo={self.snr_lo} > snr_hi={self.snr_hi}")
        if self.max_reuse_streak < 0:
            bad("max_reuse_streak", "expected >= 0")
        if self.max_reuse_streak_end is not None and self.max_reuse_streak_end < 0:
            bad("max_reuse_streak_end", "expected None or >= 0")
        if self.end_computes < 0:
            bad("end_computes", "expected >= 0")
        if self.streak_profile is not None:
            prof = self.streak_profile
            ok = len(prof) > 0 and all(len(e) == 2 and isinstance(e[1], int) and e[1] >= 0
                                       and isinstance(e[0], (int, float)) and 0.0 <= e[0] <= 1.0 for e in prof)
            if not ok or any(a[0] >= b[0] for a, b in zip(prof, prof[1:])):
                bad("streak_profile", "expected ((progress, cap), ...), progress rising in [0, 1], int caps >= 0")
        if self.static_period < 0:
            bad("static_period", "expected >= 0")
        if self.cache_budget_bytes is not None and self.cache_budget_bytes < 0:
            bad("cache_budget_bytes", "expected None or >= 0")
        if self.entropy_rows <= 0 or self.entropy_heads <= 0:
            bad("entropy_rows" if self.entropy_rows <= 0 else "entropy_heads", "expected > 0")
        if self.static_plan is not None:
            widths = {len(row) for row in self.static_plan}
            if len(widths) > 1:
                bad("static_plan", f"rows have different lengths {sorted(widths)}")
        if self.cache_mode == "csb" and not self.cache_calibration:
            bad("cache_calibration", "cache_mode='csb' needs a calibration file")
        if not (isinstance(self.delta, (int, float)) and math.isfinite(self.delta) and self.delta >= 0):
            bad("delta", "expected a finite number >= 0")
        if self.change_scope not in ("layer", "stack"):
            bad("change_scope", "expected 'layer' or 'stack'")
        if self.change_accumulate and not self.use_change_gate:
            bad("change_accumulate", "it shapes the change gate's signal: set use_change_gate=True")
        if self.forecast_order not in FORECAST_ORDERS:
            bad("forecast_order", f"expected one of {FORECAST_ORDERS}")
        if self.forecast_in not in FORECAST_ABSCISSAE:
            bad("forecast_in", f"expected one of {FORECAST_ABSCISSAE}")
        if self.forecast_order and self.granularity == "kv":
            bad("forecast_order", "forecasting serves an output (granularity 'attn' or 'block'), not K/V")
        if self.granularity == "stack" and self.use_schedule:
            bad("use_schedule", "the layer schedule decides per layer, and granularity 'stack' reuses every layer at "
                                "once (set use_schedule=False)")
        if self.cfg_share and self.granularity == "stack":
            bad("cfg_share", "CFG sharing runs each block on the conditional half; granularity 'stack' skips blocks "
                             "whole (use 'attn' or 'block')")
        if self.cfg_share and self.granularity == "kv":
            bad("cfg_share", "CFG sharing shares an output (granularity 'attn' or 'block'), not K/V")
        if self.forecast_weights is not None:
            for k, row in enumerate(self.forecast_weights):
                if row is not None and not (row and all(isinstance(w, (int, float)) and math.isfinite(w) for w in row)):
                    raise ValueError(f"DQARConfig.forecast_weights[{k}]={row!r} is invalid: expected None or a "
                                     "non-empty tuple of finite numbers")
            if not self.forecast_order:
                bad("forecast_weights", "fitted weights serve a forecast: set forecast_order >= 1")
        if self.use_policy and not self.policy_path:
            bad("policy_path", "use_policy=True needs a policy file")

    @property
    def history(self) -> int:
        """How many computes each cache entry keeps: forecast_order + 1, or the longest fitted weight row."""
        rows = [len(r) for r in self.forecast_weights or () if r is not None]
        return max([self.forecast_order + 1] + rows)

    @classmethod
    def preset(cls, name: str, **overrides) -> "DQARConfig":
        """A named preset, optionally with fields overridden: `DQARConfig.preset("gates", tau=0.9)`.

        Presets are pure: the same name always gives the same config (no file is read)."""
        if name not in PRESETS:
            raise ValueError(f"unknown DQAR preset {name!r}; known presets: {', '.join(PRESETS)}")
        fields = dict(PRESETS[name])
        return dataclasses.replace(cls(**fields), **overrides)

    def replace(self, **changes) -> "DQARConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        """Every field, JSON-ready (`static_plan` as nested lists; snr_hi may be inf, which json writes as Infinity)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, fields: dict) -> "DQARConfig":
        """The config with these fields (others default); an unknown field name is a ValueError naming it."""
        unknown = sorted(set(fields) - _FIELDS)
        if unknown:
            raise ValueError(f"unknown DQARConfig field(s) {unknown}; known fields: {', '.join(sorted(_FIELDS))}")
        fields = dict(fields)
        if fields.get("static_plan") is not None:
            fields["static_plan"] = tuple(tuple(bool(v) for v in row) for row in fields["static_plan"])
        if fields.get("streak_profile") is not None:
            fields["streak_profile"] = tuple((float(a), int(c)) for a, c in fields["streak_profile"])
        if fields.get("forecast_weights") is not None:
            fields["forecast_weights"] = tuple(None if r is None else tuple(float(w) for w in r)
                                               for r in fields["forecast_weights"])
        return cls(**fields)


def parse_overrides(pairs: list[str]) -> dict:
    """`["tau=0.9", "cfg_share=true", "snr_hi=inf", "policy_path=none"]` as typed DQARConfig fields.

    Each value is read as its field's type (bool: true/false, int, float, str; "none" where the field takes
    None); a malformed pair, an unknown name or an unreadable value is a ValueError naming it. The values are
    validated when the config is built (`DQARConfig.preset(name, **overrides)`)."""
    out = {}
    for pair in pairs:
        name, eq, text = pair.partition("=")
        name, text = name.strip(), text.strip()
        if not eq or not name:
            raise ValueError(f"override {pair!r} is not of the form name=value (e.g. tau=0.9)")
        if name not in _FIELDS:
            raise ValueError(f"override {pair!r} names no DQARConfig field; known fields: {', '.join(sorted(_FIELDS))}")
        out[name] = _parse_field(name, text, pair)
    return out


def _parse_field(name: str, text: str, pair: str):
    kind = _FIELD_TYPES[name]
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


_NO_GATES = dict(use_entropy_gate=False, use_snr_gate=False, use_schedule=False)

_FORECAST = dict(forecast_order=1, cache_mode="delta", max_reuse_streak=1, max_reuse_streak_end=3, end_computes=2,
                 collect_stats=False, granularity="stack", **_NO_GATES)

PRESETS: dict[str, dict] = {
    # attached, never reuses: bit-identical to the model without DQAR
    "off": dict(enabled=False, collect_stats=False),
    # reuse whenever a cache entry exists (an upper bound on savings, a lower bound on quality)
    "always": dict(always_reuse=True, warmup=0.0, cache_mode="fp32", granularity="attn", **_NO_GATES),
    # a fixed DiTFastAttn-style plan: after warmup, every layer reuses its attention output on every second step
    "static": dict(static_period=2, cache_mode="fp16", granularity="attn", **_NO_GATES),
    # one gate at a time, for ablations
    "entropy": dict(use_snr_gate=False, use_schedule=False),
    "snr": dict(use_entropy_gate=False, use_schedule=False),
    # entropy + SNR gates + layer schedule + INT8 cache, reusing whole blocks: the field defaults. Its cache mode,
    # int8_channel, is the one notebooks/04_quantization measures as recommended (it asserts that the two agree);
    # the CSB cache is the "dqar_csb" preset (attention outputs, which that notebook calibrates), since it needs
    # the calibration file notebooks/04_quantization fits. notebooks/06 and 09 measure these gates well below the
    # forecast presets on the speed-quality front, so they are no longer the "dqar" preset.
    "gates": dict(),
    "dqar_csb": dict(cache_mode="csb", cache_calibration=str(DEFAULT_CACHE_CALIBRATION), granularity="attn"),
    # forecast reuse on a front-loaded plan (notebooks/09_forecast measures it against every peer and fewer steps):
    # the whole stack reuses (every layer shares the plan, so one forecast of the stack's residual gives what one per
    # block would, at 1/L of the work; 09's variants time both), its residual extrapolated
    # linearly from the last two computes (order 2 and the
    # change gate measured worse there); no reuse in the first 20 % of steps nor the last two, and at most 1
    # consecutive reuse right after warmup, growing to 3 at the end (computes thin out as the sample settles). The
    # cache keeps each layer's older compute in fp16 and the newer as an INT8 delta ("delta": INT8 histories stored
    # whole cost more dB, measured in 09). The streak cap pair is the knob 09 sweeps for the curve.
    "forecast": _FORECAST,
    # the default, what apply_dqar(model) and dq.dqar(pipe) run: forecast reuse of the whole stack on a streak
    # profile, the point notebooks/09_forecast measures best among the presets that need no fitting (the fastest at
    # >= 43 dB with class accuracy within 0.02 of full compute; 09 asserts that this is it). Every second step
    # reuses until 20 % of the way, then two in a row per compute, then every second again from 90 % on, the last
    # step computes; each reuse is the quadratic forecast from the last three computes. Among the profiles 09
    # sweeps it also had the best mean and worst PSNR on five held-out seeds (45.5 / 44.6 dB at reuse 0.60,
    # against 45.1 / 44.0 at 0.58 for 1/2/1 at 0.3/0.9; CPU pilot, 2026-12-06). The shape is the one SeaCache's
    # adaptive gate takes on this model: front-loading every compute (the "forecast" preset, a warmup) spends them
    # where a forecast is already good, and long streaks at the end, where the fine detail forms, cost dB.
    "dqar": dict(_FORECAST, forecast_order=2, warmup=0.0, end_computes=1,
                 streak_profile=((0.0, 1), (0.2, 2), (0.9, 1))),
    # the learned MLP policy (data/policy/policy.pt, trained in notebooks/05_policy) in place of the gates;
    # it was trained on the cost of reusing attention outputs, so it reuses attention outputs
    "policy": dict(use_policy=True, policy_path=str(DEFAULT_POLICY), use_schedule=False, granularity="attn"),
    # the learned forecast policy (data/policy/forecast_policy.pt, trained in notebooks/05_policy on the measured
    # cost of skipping each (step, streak)) in place of the "dqar" preset's streak profile: the same whole-stack
    # quadratic forecast and delta cache, at most 2 reuses in a row (the streaks it was labelled on), the last
    # step computes; policy_threshold is its knob (lower reuses more; notebooks/09 sweeps it)
    "dqar_policy": dict(_FORECAST, forecast_order=2, warmup=0.0, end_computes=1, max_reuse_streak=2,
                        max_reuse_streak_end=None, use_policy=True, policy_path=str(DEFAULT_FORECAST_POLICY)),
}

_FIELDS = frozenset(f.name for f in dataclasses.fields(DQARConfig))
_FIELD_TYPES = {f.name: str(f.type) for f in dataclasses.fields(DQARConfig)}
