"""One decision rule: every preset's live decisions, replayed from the controller's trace by dqar_lib.method.rule.

The controller and the replay both step a `rule.RuleState`; these tests sample with each preset attached and
check, step by step, that the rule over the traced host numbers gives the live run's reuse and its reason.
"""

import warnings

import numpy as np
import pytest
import torch

from dqar_lib import DQARConfig, load_model, sample, tiny_dit
from dqar_lib.fitting.replay import replay
from dqar_lib.fitting.tracing import trace_matrix
from dqar_lib.method.config import PRESETS
from dqar_lib.method.policy import load_policy, policy_features
from dqar_lib.method.rule import RuleState, keep_step
from dqar_lib.method.schedule import progress
from dqar_lib.method.storage import load_csb_calibration

CACHE_STATUSES = ("missing", "invalidated", "nonfinite")  # a planned reuse the cache refused
LOOSE = dict(tau=0.999, snr_lo=0.0)  # gates that the tiny random DiT passes, so streaks and the schedule decide


@pytest.fixture(scope="module")
def models():
    return {"tiny": tiny_dit(), "embedded": load_model()}


def preset_config(name: str, **overrides) -> DQARConfig:
    cfg = DQARConfig.preset(name, **overrides)
    if cfg.kind == "policy":
        load_policy(cfg.decide.path)  # the preset's policy file is shipped
    if cfg.store.mode == "csb":
        load_csb_calibration(cfg.store.calibration)
        # the shipped calibration covers attention outputs (kind "out") only, not block residuals ("res")
        cfg = cfg.replace(granularity="attn")
    return cfg


def live_run(models, cfg: DQARConfig, scheduler: str) -> list[dict]:
    """The trace of one sampling run: the embedded model where the config needs its CSB calibration."""
    model, steps = (models["embedded"], 8) if cfg.store.mode == "csb" else (models["tiny"], 10)
    res = sample(model, [1, 2], num_steps=steps, guidance_scale=1.5, seed=0, scheduler=scheduler, dqar=cfg,
                 progress=False)
    return res.controller.trace()


def assert_rule_replays(trace: list[dict], cfg: DQARConfig) -> None:
    """Step a RuleState over the trace: each (reuse, reason) the rule plans is the live one, except a planned
    reuse the cache refused, which happens only at step 0 (nothing cached yet)."""
    S, L = 1 + max(r["step"] for r in trace), 1 + max(r["layer"] for r in trace)
    by = {(r["step"], r["layer"]): r for r in trace}
    policy = load_policy(cfg.decide.path) if cfg.kind == "policy" else None
    state = RuleState(L)
    for s in range(S):
        rows = [by[(s, i)] for i in range(L)]
        sp = progress(rows[0]["t"])
        state.advance(sp, cfg.warmup)
        H, snr = [r["H_t"] for r in rows], rows[0]["SNR_t"]
        p = None
        if policy is not None:
            with torch.no_grad():
                p = policy(policy_features(H, snr, rows[0]["x_norm"], sp, L, rows[0]["x_change"],
                                           state.streaks)).tolist()
        for i, ((ok, why), r) in enumerate(zip(state.plan(cfg, sp, H, snr, p, steps_left=S - 1 - s), rows)):
            if r["reason"] in CACHE_STATUSES:
                assert s == 0 and ok and not r["reuse"], (s, i, r["reason"], why)
            else:
                assert (ok, why) == (r["reuse"], r["reason"]), (s, i)
            state.record(i, r["reuse"])


@pytest.mark.parametrize("scheduler", ["ddim", "dpm"])
@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_replays_its_live_decisions(models, name, scheduler, fresh_reuse_warnings):
    """A preset whose entropy gate the tiny random DiT never passes ("gates", "entropy": H_t near 1, tau 0.92) reuses
    nothing, and sample's warning says so; the replay holds either way."""
    cfg = preset_config(name)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trace = live_run(models, cfg, scheduler)
    live = trace_matrix(trace, "reuse").astype(bool)  # (S, L)
    warned = [w for w in caught if "DQAR reused nothing" in str(w.message)]
    assert bool(warned) == (name in ("gates", "entropy")), [str(w.message) for w in warned]
    assert not (warned and live.any())
    assert np.array_equal(replay(trace, cfg), live)
    assert_rule_replays(trace, cfg)


@pytest.mark.parametrize("scheduler", ["ddim", "dpm"])
@pytest.mark.parametrize("name", [n for n, c in ((n, DQARConfig.preset(n)) for n in PRESETS)
                                  if c.kind not in ("off", "always")])
def test_loose_gates_replay_streaks_and_schedule(models, name, scheduler):
    """Gates loosened so that reuse happens, and stops: streaks, the schedule and the static period decide."""
    d = PRESETS[name].decide  # loosen only the gates the preset runs
    cfg = preset_config(name, **{k: v for k, v in LOOSE.items() if getattr(d, k, None) is not None})
    trace = live_run(models, cfg, scheduler)
    live = trace_matrix(trace, "reuse").astype(bool)
    assert live.any() and not live.all()
    assert np.array_equal(replay(trace, cfg), live)
    assert_rule_replays(trace, cfg)


def test_keep_is_the_rule_over_an_optimistic_next_step():
    """A fresh output is stored exactly where the next step could reuse it; unknown progress keeps it."""
    dqar = DQARConfig.preset("gates")
    assert keep_step(dqar, 3, 0.9, 4, 2) == [True] * 4  # past warmup, the schedule admits every layer at s=0.9
    assert keep_step(dqar, 3, 0.25, 4, 2) == [True, True, True, False]  # the schedule's depth at s=0.25
    assert keep_step(dqar, 0, 0.1, 4, None) == [False] * 4  # still warmup at the next step
    assert keep_step(dqar, 0, None, 4, None) == [True] * 4  # no scheduler: the next step is unknown
    assert keep_step(DQARConfig.preset("off"), 3, None, 4, 2) == [False] * 4
    assert keep_step(dqar.replace(max_reuse_streak=0), 3, None, 4, 2) == [False] * 4
    plan = ((False, True), (True, False))
    assert keep_step(dqar.replace(static_plan=plan), 0, None, 2, None) == [True, False]  # the next row
    assert keep_step(dqar.replace(static_plan=plan), 1, 0.5, 2, 0) == [False, False]  # past the plan's end
    static = DQARConfig.preset("static")  # period 2: steps 0, 2, 4 ... after warmup compute, 1, 3 ... reuse
    assert keep_step(static, 5, 0.6, 2, 0) == [True, True]
    assert keep_step(static, 6, 0.7, 2, 1) == [False, False]  # the next step computes (and stores) itself
