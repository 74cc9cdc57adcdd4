import numpy as np
import pytest
import torch

from dqar_lib import DQARConfig, sample, tiny_dit
from dqar_lib.fitting.replay import drift_cost, grid_summaries, replay, runs, summarize
from dqar_lib.fitting.tracing import record_trace, trace_matrix
from dqar_lib.publish.explorer import explorer_widget


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return tiny_dit(depth=3).eval()


def test_replay_reproduces_the_controllers_decisions(model):
    # a live run with gates that reuse some (step, layer) pairs and not others
    cfg = DQARConfig.preset("gates", tau=0.999, snr_lo=0.0, cache_mode="fp32", warmup=0.2, schedule_depth_start=0.3)
    res = sample(model, [1, 2], num_steps=12, dqar=cfg, progress=False)
    trace = res.controller.trace()
    live = trace_matrix(trace, "reuse").astype(bool)  # (S, L)
    assert live.any() and not live.all()
    assert np.array_equal(replay(trace, cfg), live)
    assert np.array_equal(replay(trace, cfg.replace(enabled=False)), np.zeros_like(live))


def test_replay_rejects_mixed_runs(model):
    rows = [dict(r, seed=s) for s in (0, 1) for r in record_trace(model, [1], num_steps=4, seed=s)]
    with pytest.raises(ValueError, match="one run"):
        replay(rows, DQARConfig.preset("gates"))
    assert len(runs(rows)) == 2


def test_drift_cost_accumulates_over_a_streak():
    rows = [dict(step=s, layer=0, rel_l2=0.1 * s) for s in range(4)]
    plan = np.array([[False], [True], [True], [False]])
    assert np.allclose(drift_cost(rows, plan)[:, 0], [0.0, 0.1, 0.3, 0.0])


def test_summary_and_widget(model):
    rows = record_trace(model, [1, 2], num_steps=8, seed=0)
    loose, tight = (summarize(rows, DQARConfig.preset("gates", tau=tau, snr_lo=0.0)) for tau in (1.0, 0.0))
    assert loose["reuse_fraction"] > tight["reuse_fraction"] == 0.0
    base = DQARConfig.preset("gates", snr_lo=0.0)
    summaries = grid_summaries(rows, base, taus=[0.0, 1.0], snr_los=[0.0], depths=[0.5, 1.0])
    assert summaries[(1.0, 0.0, 1.0)] == summarize(rows, base.replace(tau=1.0, schedule_depth_start=1.0))
    box = explorer_widget(rows, base, summaries, quant_errors={"fp16": 0.0, "int8_channel": 0.01})
    top = box.children[-1]
    assert len(top.children) == 2 and len(top.children[0].children[0].children) == 2
    assert top.children[0].children[0].children[0].value[:4] == b"\x89PNG"


def test_calibrate_gates_meets_a_reuse_budget(model):
    from dqar_lib.fitting.replay import fit_gate_thresholds

    rows = [r for s in (0, 1) for r in record_trace(model, [1, 2], num_steps=10, seed=s)]
    base = DQARConfig.preset("gates", use_schedule=False)
    top = summarize(rows, base.replace(tau=1.0, snr_lo=0.0))["reuse_fraction"]
    g = fit_gate_thresholds(rows, base, target_reuse=top / 2, snr_quantile=0.0)
    assert 0.0 < g["reuse_fraction"] <= top / 2
    assert summarize(rows, base.replace(tau=g["tau"], snr_lo=g["snr_lo"]))["reuse_fraction"] == g["reuse_fraction"]
    with pytest.raises(ValueError, match="target_reuse"):
        fit_gate_thresholds(rows, base, target_reuse=1.5)
