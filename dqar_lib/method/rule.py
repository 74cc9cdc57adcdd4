"""The reuse rule, once: pure functions of the config and host numbers, and the per-run state they step.

`decide` is the rule for one (step, layer); `plan_step` applies it to every layer of a step; `keep_step`
asks the same rule, over an optimistic view of the next step, whether a fresh output is worth storing.
`RuleState` is what the rule carries from step to step (streaks, steps since warmup). The controller and
the trace replay (dqar_lib.fitting.replay) both step a `RuleState`, so they cannot drift apart.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field

from . import gates
from .config import DQARConfig
from .schedule import layer_allowed, profile_cap, schedule_depth, streak_cap


@dataclass
class StepView:
    """What the gates see for one (step, layer): host numbers only."""

    step: int
    s: float  # progress in [0, 1]
    layer: int
    num_layers: int
    H_t: float | None
    snr_t: float | None
    streak: int
    post_warmup_step: int | None  # steps since warmup ended (None: still in warmup)
    p_reuse: float | None = None
    change: float | None = None  # relative L1 change of the layer's input since it last computed (change gate)
    steps_left: int | None = None  # steps after this one (None: unknown, no scheduler)


def advance_post_warmup(post: int | None, step: int, s: float, warmup: float) -> int | None:
    """Steps since warmup ended, moved on to `step` at progress s (None while still in warmup; step 0 never ends it)."""
    if post is None:
        return 0 if step > 0 and s >= warmup else None
    return post + 1


def decide(cfg: DQARConfig, v: StepView, p: int | None = None) -> tuple[bool, str]:
    """Whether layer v.layer may reuse at this step, and why: a pure function of the config and host numbers.

    `p` is the prompt length in tokens (None for class labels), which sets the entropy threshold tau(p).
    """
    d = cfg.decide
    if d.kind == "off":
        return False, "off"
    if d.kind == "always":
        return True, "always"
    if d.kind == "plan":
        ok = v.step < len(d.plan) and v.layer < len(d.plan[v.step]) and d.plan[v.step][v.layer]
        return bool(ok), "static" if ok else "static_compute"
    if v.s < d.warmup or v.post_warmup_step is None:
        return False, "warmup"
    if d.end_computes and v.steps_left is not None and v.steps_left < d.end_computes:
        return False, "end"
    if d.kind == "period":
        ok = v.post_warmup_step % d.period == d.period - 1
        return ok, "static" if ok else "static_compute"
    if d.schedule is not None:
        depth = schedule_depth(v.s, d.warmup, d.schedule.depth_start, d.schedule.depth_end)
        if not layer_allowed(v.layer, v.num_layers, depth):
            return False, "schedule"
    cap = streak_cap(v.s, d.warmup, d.max_streak, d.max_streak_end) if d.streak_profile is None \
        else profile_cap(v.s, d.streak_profile, d.max_streak)
    if not gates.streak_gate(v.streak, cap):
        return False, "streak"
    if d.kind == "policy":
        ok = v.p_reuse is not None and v.p_reuse >= d.threshold
        return ok, "policy" if ok else "policy_compute"
    if d.kind == "gates":
        if d.tau is not None and not gates.entropy_gate(v.H_t, gates.tau_for_prompt(d.tau, p, d.tau_slope, d.p_ref)):
            return False, "entropy"
        if d.snr_lo is not None and not gates.snr_gate(v.snr_t, d.snr_lo, d.snr_hi):
            return False, "snr"
    if d.kind == "change" and not gates.change_gate(v.change, d.delta):
        return False, "change"  # the last rule: the hook measures the change only where every other rule passed
    return True, "reuse"


def plan_step(cfg: DQARConfig, step: int, s: float, H: list, snr: float | None, streaks: list[int],
              post_warmup: int | None, p_reuse: list | None = None,
              prompt_length: int | None = None, change: list | None = None,
              steps_left: int | None = None) -> list[tuple[bool, str]]:
    """`decide` for every layer of one step: H[i] is layer i's H_t, snr the step's SNR_t, streaks[i] its
    consecutive reuses so far, p_reuse[i] the policy's probability (None: no policy). One (reuse, reason) a layer."""
    L = len(H)
    p = [None] * L if p_reuse is None else p_reuse
    d = [None] * L if change is None else change
    return [decide(cfg, StepView(step, s, i, L, H[i], snr, streaks[i], post_warmup, p[i], d[i], steps_left),
                   prompt_length) for i in range(L)]


@functools.lru_cache(maxsize=32)
def _progress_passes(cfg: DQARConfig) -> DQARConfig:
    """`cfg` with warmup and the layer schedule taken as passing: the optimistic view when progress is unknown."""
    d = cfg.decide
    if not hasattr(d, "warmup"):
        return cfg
    relaxed = {"schedule": None} if hasattr(d, "schedule") else {}
    return cfg.replace(decide=dataclasses.replace(d, warmup=0.0, **relaxed))


def keep_step(cfg: DQARConfig, step: int, s_next: float | None, num_layers: int, post_warmup: int | None,
              prompt_length: int | None = None, steps_left: int | None = None) -> list[bool]:
    """Whether each layer, computing at `step`, could reuse at step+1 (if not, storing its output is wasted work).

    The rule itself over an optimistic view of step+1: its progress s_next (warmup, schedule, the static
    period's phase), a streak of 0 (the layer just computed), and every statistic passing: H_t = 0 (the least
    normalised entropy), SNR_t inside the band, p_reuse = 1, no change of the input. The view is
    never less permissive than the real one, so whatever step+1 does reuse was stored. An unknown s_next (no
    scheduler, or the last step) takes warmup and the layer schedule as passing too.
    `post_warmup` is this step's counter.
    """
    if s_next is None:
        cfg, s_next = _progress_passes(cfg), 1.0
    post = advance_post_warmup(post_warmup, step + 1, s_next, cfg.warmup)
    H, p = [0.0] * num_layers, [1.0] * num_layers
    zero = [0] * num_layers  # streaks of 0, and no change of the input (the change gate passes)
    left = None if steps_left is None else steps_left - 1
    snr = getattr(cfg.decide, "snr_lo", None)
    return [ok for ok, _ in plan_step(cfg, step + 1, s_next, H, snr, zero, post, p, prompt_length, zero, left)]


def keep_ahead(cfg: DQARConfig, step: int, s_ahead: list[float], num_layers: int, post_warmup: int | None,
               prompt_length: int | None = None, steps_left: int | None = None) -> list[bool]:
    """`keep_step` over the next len(s_ahead) steps (their progress): a layer's output is worth storing if any of
    them could reuse it. A forecast of order k extrapolates from the last k+1 computes, so it looks k+1 ahead."""
    keep, post = [False] * num_layers, post_warmup
    for j, s_j in enumerate(s_ahead):
        left = None if steps_left is None else steps_left - j
        keep = [a or b for a, b in zip(keep, keep_step(cfg, step + j, s_j, num_layers, post, prompt_length, left))]
        post = advance_post_warmup(post, step + j + 1, s_j, cfg.warmup)
    return keep


@dataclass
class RuleState:
    """One run's stepping state of the rule: the step index, each layer's reuse streak, steps since warmup.

    Per step: `advance` to the step's progress, `plan` it, then `record` what each layer actually did
    (a planned reuse the cache refuses is a compute: its streak restarts).
    """

    num_layers: int
    step: int = -1
    post_warmup: int | None = None  # steps since warmup ended (None: still in warmup)
    streaks: list[int] = field(default_factory=list)

    def __post_init__(self):
        if not self.streaks:
            self.streaks = [0] * self.num_layers

    def advance(self, s: float, warmup: float) -> int:
        """Move on to the next step, at progress s; returns its index."""
        self.step += 1
        self.post_warmup = advance_post_warmup(self.post_warmup, self.step, s, warmup)
        return self.step

    def plan(self, cfg: DQARConfig, s: float, H: list, snr: float | None, p_reuse: list | None = None,
             prompt_length: int | None = None, steps_left: int | None = None) -> list[tuple[bool, str]]:
        """This step's (reuse, reason) for every layer (`plan_step` at the current state)."""
        return plan_step(cfg, self.step, s, H, snr, self.streaks, self.post_warmup, p_reuse, prompt_length,
                         steps_left=steps_left)

    def keep(self, cfg: DQARConfig, s_next: float | None, prompt_length: int | None = None,
             steps_left: int | None = None) -> list[bool]:
        """Whether each layer's fresh output this step may be served at the next (`keep_step`)."""
        return keep_step(cfg, self.step, s_next, self.num_layers, self.post_warmup, prompt_length, steps_left)

    def keep_ahead(self, cfg: DQARConfig, s_ahead: list[float], prompt_length: int | None = None,
                   steps_left: int | None = None) -> list[bool]:
        """Whether each layer's fresh output this step may be served within the next len(s_ahead) steps."""
        return keep_ahead(cfg, self.step, s_ahead, self.num_layers, self.post_warmup, prompt_length, steps_left)

    def decide_layer(self, cfg: DQARConfig, s: float, layer: int, H_t: float | None, snr: float | None,
                     change: float | None, prompt_length: int | None = None,
                     steps_left: int | None = None) -> tuple[bool, str]:
        """One layer's (reuse, reason) at the current state, with its input change known (the change gate)."""
        v = StepView(self.step, s, layer, self.num_layers, H_t, snr, self.streaks[layer], self.post_warmup, None,
                     change, steps_left)
        return decide(cfg, v, prompt_length)

    def record(self, layer: int, reused: bool) -> None:
        """Layer `layer` reused (its streak grows) or computed (its streak restarts) at this step."""
        self.streaks[layer] = self.streaks[layer] + 1 if reused else 0
