import math

import pytest

from dqar_lib.method import gates
from dqar_lib.method.config import DQARConfig
from dqar_lib.method.rule import StepView, decide
from dqar_lib.method.schedule import layer_allowed, progress, schedule_depth, static_plan


@pytest.mark.parametrize("H,tau,expected", [(0.1, 0.5, True), (0.5, 0.5, False), (0.9, 0.5, False),
                                            (None, 0.5, False), (math.nan, 0.5, False)])
def test_entropy_gate_truth_table(H, tau, expected):
    assert gates.entropy_gate(H, tau) is expected


@pytest.mark.parametrize("snr,lo,hi,expected", [(1.0, 0.5, 2.0, True), (0.5, 0.5, 2.0, True), (2.0, 0.5, 2.0, True),
                                                (0.4, 0.5, 2.0, False), (2.1, 0.5, 2.0, False),
                                                (None, 0.5, 2.0, False), (math.nan, 0.0, math.inf, False)])
def test_snr_gate_truth_table(snr, lo, hi, expected):
    assert gates.snr_gate(snr, lo, hi) is expected


@pytest.mark.parametrize("streak,cap,expected", [(0, 2, True), (1, 2, True), (2, 2, False), (0, 0, False)])
def test_streak_gate_truth_table(streak, cap, expected):
    assert gates.streak_gate(streak, cap) is expected


def test_tau_adapts_to_prompt_length():
    assert gates.tau_for_prompt(0.8) == 0.8  # class labels: constant
    assert gates.tau_for_prompt(0.8, 77, 0.05, 77) == pytest.approx(0.8)
    assert gates.tau_for_prompt(0.8, 154, 0.05, 77) > 0.8 > gates.tau_for_prompt(0.8, 20, 0.05, 77)
    assert gates.tau_for_prompt(0.99, 10_000, 1.0, 77) == 1.0
    with pytest.raises(ValueError, match="p must be positive, got 0"):
        gates.tau_for_prompt(0.8, 0, 0.1)


def test_schedule_is_shallow_early_deep_late():
    assert schedule_depth(0.1, 0.2, 0.25, 1.0) == 0.0  # warmup
    early, late = schedule_depth(0.3, 0.2, 0.25, 1.0), schedule_depth(1.0, 0.2, 0.25, 1.0)
    assert early < late == 1.0
    assert layer_allowed(0, 8, early) and not layer_allowed(7, 8, early)
    assert all(layer_allowed(i, 8, late) for i in range(8))
    depths = [schedule_depth(progress(t), 0.2, 0.25, 1.0) for t in range(999, -1, -100)]
    counts = [sum(layer_allowed(i, 8, d) for i in range(8)) for d in depths]
    assert counts == sorted(counts) and counts[0] == 0 and counts[-1] == 8


def test_progress_from_timestep():
    assert progress(1000) == 0.0 and progress(0) == 1.0 and progress(500) == 0.5


def test_static_plan_alternates_after_warmup():
    plan = static_plan(10, 3, 0.2, 2)
    assert [row[0] for row in plan] == [False, False, False, True, False, True, False, True, False, True]
    with pytest.raises(ValueError, match="period must be at least 2"):
        static_plan(10, 3, 0.2, 1)


def view(**kw):
    base = dict(step=10, s=0.9, layer=0, num_layers=4, H_t=0.1, snr_t=10.0, streak=0, post_warmup_step=3)
    base.update(kw)
    return StepView(**base)


def test_decide_follows_each_rule():
    cfg = DQARConfig.preset("gates", tau=0.5, snr_lo=1.0, snr_hi=100.0)
    assert decide(cfg, view()) == (True, "reuse")
    assert decide(cfg, view(H_t=0.7)) == (False, "entropy")
    assert decide(cfg, view(snr_t=0.5)) == (False, "snr")
    assert decide(cfg, view(streak=cfg.decide.max_streak)) == (False, "streak")
    assert decide(cfg, view(s=0.1, post_warmup_step=None)) == (False, "warmup")
    assert decide(cfg, view(s=0.21, layer=3)) == (False, "schedule")
    assert decide(DQARConfig.preset("off"), view()) == (False, "off")
    assert decide(DQARConfig.preset("always"), view(H_t=1.0, snr_t=0.0)) == (True, "always")
    assert decide(cfg.replace(use_entropy_gate=False), view(H_t=0.99)) == (True, "reuse")
