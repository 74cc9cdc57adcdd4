"""What decides whether a layer reuses: one explicit choice, each a small documented dataclass.

A `DQARConfig` holds exactly one of these in its `decide` field; the choice is its `kind`:

| kind | class | reuses when |
| --- | --- | --- |
| "off" | `Off` | never (attached, bit-identical to the model without DQAR) |
| "always" | `Always` | a valid cache entry exists (an upper bound on savings) |
| "plan" | `Plan` | a fixed (steps x layers) plan says so (DiTFastAttn-style, or fitted by `calibrate_plan`) |
| "period" | `Period` | every `period`-th step after warmup |
| "profile" | `Profile` | the streak cap allows (a fixed rhythm of computes and reuses by progress) |
| "gates" | `Gates` | the entropy gate H_t < tau(p) and the SNR gate snr_lo <= SNR_t <= snr_hi pass |
| "change" | `Change` | the layer's input changed less than delta since it last computed |
| "policy" | `Policy` | the learned MLP's p_reuse >= threshold |

The adaptive kinds (profile, gates, change, policy) share a warmup, the last steps that always compute, a cap on
consecutive reuses and an optional layer schedule (`_Capped`); a field exists only where the rule reads it, so no
combination the rule would ignore can be built.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar


def _bad(obj, name: str, why: str):
    raise ValueError(f"{type(obj).__name__}.{name}={getattr(obj, name)!r} is invalid: {why}")


def _unit(obj, *names: str) -> None:
    for name in names:
        v = getattr(obj, name)
        if isinstance(v, bool) or not (isinstance(v, (int, float)) and 0.0 <= v <= 1.0):
            _bad(obj, name, "expected a number in [0, 1]")


@dataclass(frozen=True)
class Off:
    """Attached, never reuses: outputs are bit-identical to the model without DQAR."""

    kind: ClassVar[str] = "off"


@dataclass(frozen=True)
class Always:
    """Reuse whenever a valid cache entry exists: skips warmup, gates and schedule (a bound, not a method)."""

    kind: ClassVar[str] = "always"


@dataclass(frozen=True)
class Plan:
    """A fixed (steps x layers) plan: `plan[s][l]` True reuses layer l at step s; steps past the plan compute."""

    plan: tuple[tuple[bool, ...], ...] = ()
    kind: ClassVar[str] = "plan"

    def __post_init__(self):
        widths = {len(row) for row in self.plan}
        if len(widths) > 1:
            _bad(self, "plan", f"rows have different lengths {sorted(widths)}")


@dataclass(frozen=True)
class _Timed:
    """What every rule that reads progress shares."""

    warmup: float = 0.0
    """Fraction of the steps at the start that always recompute (the sample is still forming)."""
    end_computes: int = 0
    """The last `end_computes` steps always compute (counted on the scheduler's timesteps; needs a scheduler)."""

    def __post_init__(self):
        _unit(self, "warmup")
        if not isinstance(self.end_computes, int) or self.end_computes < 0:
            _bad(self, "end_computes", "expected an int >= 0")


@dataclass(frozen=True)
class Period(_Timed):
    """After warmup, every layer reuses on every `period`-th step (the static DiTFastAttn-style rule)."""

    period: int = 2
    kind: ClassVar[str] = "period"

    def __post_init__(self):
        super().__post_init__()
        if not isinstance(self.period, int) or self.period < 1:
            _bad(self, "period", "expected an int >= 1")


@dataclass(frozen=True)
class LayerSchedule:
    """Shallow blocks early, deep blocks late: right after warmup the shallowest `depth_start` fraction of blocks
    may reuse, growing linearly to `depth_end` at the last step."""

    depth_start: float = 0.5
    depth_end: float = 1.0

    def __post_init__(self):
        _unit(self, "depth_start", "depth_end")


@dataclass(frozen=True)
class _Capped(_Timed):
    """The adaptive rules: a cap on consecutive reuses per layer, and an optional layer schedule."""

    max_streak: int = 2
    """At most this many consecutive reuses per layer before it must recompute (0: never reuse)."""
    max_streak_end: int | None = None
    """If set, the cap grows linearly with progress, from `max_streak` right after warmup to this at the last step."""
    streak_profile: tuple[tuple[float, int], ...] | None = None
    """Caps by progress in place of the linear ramp: ((s_1, c_1), (s_2, c_2), ...) caps streaks at c_k from progress
    s_k on (s_1 < s_2 < ... in [0, 1]; before s_1: max_streak)."""
    schedule: LayerSchedule | None = None
    """The layer schedule, or None (every layer may reuse; needed for granularity "stack")."""

    def __post_init__(self):
        super().__post_init__()
        if not isinstance(self.max_streak, int) or self.max_streak < 0:
            _bad(self, "max_streak", "expected an int >= 0")
        if self.max_streak_end is not None and (not isinstance(self.max_streak_end, int) or self.max_streak_end < 0):
            _bad(self, "max_streak_end", "expected None or an int >= 0")
        prof = self.streak_profile
        if prof is not None:
            ok = len(prof) > 0 and all(len(e) == 2 and isinstance(e[1], int) and e[1] >= 0
                                       and isinstance(e[0], (int, float)) and 0.0 <= e[0] <= 1.0 for e in prof)
            if not ok or any(a[0] >= b[0] for a, b in zip(prof, prof[1:])):
                _bad(self, "streak_profile", "expected ((progress, cap), ...), progress rising in [0, 1], "
                                             "int caps >= 0")
            if self.max_streak_end is not None:
                _bad(self, "max_streak_end", "a streak_profile sets the caps by progress; the linear ramp is unused")


@dataclass(frozen=True)
class Profile(_Capped):
    """Reuse whenever the streak cap allows: a fixed rhythm of computes by progress, decided on no measurement."""

    kind: ClassVar[str] = "profile"


@dataclass(frozen=True)
class Gates(_Capped):
    """The proposal's gates: reuse only if H_t < tau(p) and snr_lo <= SNR_t <= snr_hi (None switches a gate off)."""

    tau: float | None = 0.92
    """Entropy threshold for class labels (normalised entropy lies in [0, 1]); None: no entropy gate."""
    tau_slope: float = 0.0
    """tau(p) = tau + tau_slope * log(p / p_ref) for text prompts of p tokens; 0 keeps tau constant."""
    p_ref: int = 77
    """The prompt length at which tau(p) = tau."""
    snr_lo: float | None = 0.25
    """Lower SNR bound: SNR_t = ||x0||^2 / (||x_t - x0||^2 + eps) must be at least this; None: no SNR gate."""
    snr_hi: float = math.inf
    """Upper SNR bound."""
    kind: ClassVar[str] = "gates"

    def __post_init__(self):
        super().__post_init__()
        if self.tau is None and self.snr_lo is None:
            raise ValueError("Gates with tau=None and snr_lo=None gate nothing: use Profile (reuse as the cap allows)")
        if self.tau is not None:
            _unit(self, "tau")
        elif self.tau_slope or self.p_ref != 77:
            _bad(self, "tau_slope" if self.tau_slope else "p_ref", "it shapes tau(p), and tau=None (no entropy gate)")
        if not math.isfinite(self.tau_slope):
            _bad(self, "tau_slope", "expected a finite number")
        if not isinstance(self.p_ref, int) or self.p_ref <= 0:
            _bad(self, "p_ref", "expected a positive token count")
        if self.snr_lo is None:
            if self.snr_hi != math.inf:
                _bad(self, "snr_hi", "it bounds the SNR gate, and snr_lo=None (no SNR gate)")
            return
        if not (isinstance(self.snr_lo, (int, float)) and math.isfinite(self.snr_lo) and self.snr_lo >= 0):
            _bad(self, "snr_lo", "expected None or a finite number >= 0")
        if not (isinstance(self.snr_hi, (int, float)) and not math.isnan(self.snr_hi) and self.snr_hi >= 0):
            _bad(self, "snr_hi", "expected a number >= 0 (math.inf for no upper bound)")
        if self.snr_lo > self.snr_hi:
            raise ValueError(f"Gates SNR range is empty: snr_lo={self.snr_lo} > snr_hi={self.snr_hi}")


@dataclass(frozen=True)
class Change(_Capped):
    """The change gate: reuse only while the relative L1 change of the layer's input since it last computed stays
    below delta (measured in the hook where every other rule passed: one host read per layer and step)."""

    delta: float = 0.1
    scope: str = "layer"
    """"layer": each layer measures its own input; "stack": the first layer's change decides for every layer."""
    accumulate: bool = False
    """False measures the input against its value at the layer's last compute; True sums the relative L1 change
    between consecutive steps since that compute, as TeaCache and SeaCache do."""
    kind: ClassVar[str] = "change"

    def __post_init__(self):
        super().__post_init__()
        if isinstance(self.delta, bool) or not (isinstance(self.delta, (int, float)) and math.isfinite(self.delta)
                                                and self.delta >= 0):
            _bad(self, "delta", "expected a finite number >= 0")
        if self.scope not in ("layer", "stack"):
            _bad(self, "scope", "expected 'layer' or 'stack'")


@dataclass(frozen=True)
class Policy(_Capped):
    """A trained MLP policy decides: reuse when its p_reuse >= threshold."""

    path: str = ""
    """The policy file: a path, or a name under the data folder ("policy/policy.pt"; `dqar_lib.method.files`)."""
    threshold: float = 0.5
    kind: ClassVar[str] = "policy"

    def __post_init__(self):
        super().__post_init__()
        if not self.path:
            _bad(self, "path", "a policy needs its file")
        _unit(self, "threshold")


MODES: dict[str, type] = {c.kind: c for c in (Off, Always, Plan, Period, Profile, Gates, Change, Policy)}
"""kind -> the class that decides."""
Decision = Off | Always | Plan | Period | Profile | Gates | Change | Policy
