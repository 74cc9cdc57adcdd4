import numpy as np
import pytest
import torch

from dqar_lib import tiny_dit
from dqar_lib.fitting.tracing import gate_thresholds, record_trace, trace_matrix
from dqar_lib.publish.notebook import check_parameters


def test_record_trace_rows_and_change(dit):
    rows = record_trace(dit, [0, 1], num_steps=5)
    assert len(rows) == 15
    assert all(np.isnan(r["rel_l2"]) for r in rows[:3])  # step 0: nothing to compare with
    assert all(0 < r["rel_l2"] < 10 and -1 <= r["cosine"] <= 1 for r in rows[3:])
    m = trace_matrix(rows, "rel_l2")
    assert m.shape == (5, 3) and np.isnan(m[0]).all()


def test_trace_matrix_rejects_empty():
    with pytest.raises(ValueError, match="trace is empty"):
        trace_matrix([], "H_t")


def test_gate_thresholds_are_quantiles():
    rows = [dict(t=100.0, H_t=h, SNR_t=s) for h, s in zip(np.linspace(0, 1, 101), np.linspace(0, 10, 101))]
    rows.append(dict(t=999.0, H_t=5.0, SNR_t=-5.0))  # in warmup: ignored
    g = gate_thresholds(rows, tau_quantile=0.5, snr_quantile=0.3)
    assert g["tau"] == pytest.approx(0.5) and g["snr_lo"] == pytest.approx(3.0)
    with pytest.raises(ValueError, match="tau_quantile=1.5"):
        gate_thresholds(rows, tau_quantile=1.5)
    with pytest.raises(ValueError, match="no trace rows past warmup"):
        gate_thresholds(rows[-1:])


@pytest.mark.parametrize("params,message", [
    (dict(profile="fast"), "profile='fast' is invalid"),
    (dict(steps=0), "steps=0 is invalid"),
    (dict(seed=-1), "seed=-1 is invalid"),
    (dict(seeds="[0]"), "seeds='\\[0\\]' is invalid"),
    (dict(seeds=[]), "seeds=\\[\\] is invalid"),
    (dict(scheduler="euler"), "scheduler='euler' is invalid"),
    (dict(tau=2), "tau=2 is invalid"),
    (dict(guidance_scale=0.5), "guidance_scale=0.5 is invalid"),
    (dict(per_class=1.5), "per_class=1.5 is invalid"),
    (dict(alpha=-0.1), "alpha=-0.1 is invalid"),
    (dict(target_reuse=1.0), "target_reuse=1.0 is invalid"),
    (dict(cheap_quantile=0), "cheap_quantile=0 is invalid"),
    (dict(n_tau=1), "n_tau=1 is invalid"),
    (dict(n_snr=2.5), "n_snr=2.5 is invalid"),
    (dict(budgets=[0.5, 1.0]), "budgets=\\[0.5, 1.0\\] is invalid"),
    (dict(budgets=()), "budgets=\\(\\) is invalid"),
])
def test_notebook_parameters_are_checked(params, message):
    with pytest.raises(ValueError, match=message):
        check_parameters(**params)
    check_parameters(profile="smoke", steps=3, seed=0, seeds=[0, 1], scheduler="dpm", tau=0.5, guidance_scale=1.0,
                     alpha=0.0, target_reuse=0.3, cheap_quantile=0.5, n_tau=2, n_snr=12, budgets=(0.0, 0.5))


def test_record_traces_resumes_after_an_interruption(tmp_path, monkeypatch):
    import json

    from dqar_lib.fitting import tracing

    torch.manual_seed(0)
    model = tiny_dit(depth=2).eval()
    runs = [("ddim", 3, 0), ("ddim", 3, 1), ("dpm", 3, 0)]
    part = tmp_path / "traces.partial.json"
    real, calls, fail = tracing.record_trace, [], True

    def flaky(*a, **k):
        calls.append(k["seed"])
        if len(calls) == 2 and fail:
            raise RuntimeError("stopped")  # the run dies during its second trace
        return real(*a, **k)

    monkeypatch.setattr(tracing, "record_trace", flaky)
    with pytest.raises(RuntimeError, match="stopped"):
        tracing.record_traces(model, [1, 2], runs, part)
    assert list(json.loads(part.read_text())["runs"]) == ["ddim/3/0"]  # the finished run was kept
    calls.clear()
    fail = False
    rows = tracing.record_traces(model, [1, 2], runs, part)
    assert len(calls) == 2 and not part.exists()  # only the two missing runs were recorded
    monkeypatch.setattr(tracing, "record_trace", real)
    straight = tracing.record_traces(model, [1, 2], runs, tmp_path / "other.json")
    assert [(r["scheduler"], r["seed"], r["step"], r["layer"]) for r in rows] == \
        [(r["scheduler"], r["seed"], r["step"], r["layer"]) for r in straight]
    assert np.allclose([r["rel_l2"] for r in rows], [r["rel_l2"] for r in straight], equal_nan=True)
    part.write_text(json.dumps({"key": {"model": "x", "labels": [1, 2]}, "runs": {}}))
    with pytest.raises(ValueError, match="another model"):
        tracing.record_traces(model, [1, 2], runs, part)


def test_unknown_parameters_read_from_the_kernel_history():
    from dqar_lib.publish.notebook import unknown_parameters

    params = 'profile = "smoke"  # comment\nsteps: int = 50\n'
    history = ["", "import x", params, "# Parameters\nprofile = \"full\"\nstepz = 10\n", "check()"]
    assert unknown_parameters(history) == (["stepz"], ["profile", "steps"])
    assert unknown_parameters(history[:3]) == ([], [])  # no papermill: nothing injected
    assert unknown_parameters(["", params, "# Parameters\nsteps = 3\n"]) == ([], ["profile", "steps"])


def test_record_trace_stops_after_max_steps_with_the_full_runs_first_rows(dit):
    full = record_trace(dit, [1, 2], num_steps=6, seed=0)
    short = record_trace(dit, [1, 2], num_steps=6, seed=0, max_steps=2)
    layers = len({r["layer"] for r in full})
    assert len(short) == 2 * layers and {r["step"] for r in short} == {0, 1}
    for a, b in zip(short, full):
        assert a.keys() == b.keys()
        assert all(a[k] == b[k] or (a[k] != a[k] and b[k] != b[k]) for k in a)  # equal, or both NaN
    with pytest.raises(ValueError, match="max_steps=7 is invalid"):
        record_trace(dit, [1], num_steps=6, max_steps=7)
