"""Fitting and evaluating the reuse policy (dqar_lib.fitting.policy_fit), and the explorer's grids."""

import math

import pandas as pd
import pytest

from dqar_lib import DQARConfig
from dqar_lib.evaluation.metrics import psnr
from dqar_lib.fitting.policy_fit import (
    cheap_threshold,
    fit_and_evaluate_policy,
    label_rows,
    match_reuse_threshold,
    one_hot_plan,
    split_runs,
)
from dqar_lib.fitting.tracing import stored_traces
from dqar_lib.method.policy import load_policy
from dqar_lib.publish.explorer import cache_errors, slider_grid


def test_label_rows_marks_pairs_below_the_threshold_cheap():
    rows = [dict(rel_l2=v) for v in (0.1, 0.4, 0.2, float("nan"), 0.3, 0.25)]
    assert cheap_threshold(rows, 0.5) == 0.25  # the median of the five known values
    assert cheap_threshold(rows, 0.25) == 0.2
    assert label_rows(rows, 0.25).tolist() == [1.0, 0.0, 1.0, 0.0, 0.0, 0.0]  # strictly below; NaN is expensive
    assert label_rows(pd.DataFrame(rows), 0.25).tolist() == label_rows(rows, 0.25).tolist()
    with pytest.raises(ValueError, match="quantile=1.5 is invalid"):
        cheap_threshold(rows, 1.5)


def test_split_runs_holds_out_seeds_and_classes():
    rows = [dict(seed=s, cls=c, step=1, layer=0, rel_l2=0.1) for s in range(4) for c in range(10)]
    train, test = split_runs(rows, [0, 1, 2], list(range(8)), [3], [8, 9])
    assert set(train.seed) == {0, 1, 2} and set(train.cls) == set(range(8)) and len(train) == 3 * 8
    assert set(test.seed) == {3} and set(test.cls) == {8, 9} and len(test) == 2
    assert not set(train.seed) & set(test.seed) and not set(train.cls) & set(test.cls)
    with pytest.raises(ValueError, match=r"train and test classes overlap in \[7\]"):
        split_runs(rows, [0], [6, 7], [3], [7, 8])
    with pytest.raises(ValueError, match="train and test seeds overlap"):
        split_runs(rows, [0, 3], [0], [3], [8])


def test_match_reuse_threshold_converges_on_a_monotone_eval():
    calls = []

    def eval_fn(threshold):  # reuse falls as the threshold rises, like a policy's
        calls.append(threshold)
        return -threshold, 1.0 - threshold ** 2

    for target in (0.3, 0.9):
        threshold, (quality, reuse) = match_reuse_threshold(eval_fn, target)
        assert threshold == pytest.approx(math.sqrt(1 - target), abs=0.02)
        assert reuse == pytest.approx(target, abs=0.03)
        assert (quality, reuse) == eval_fn(threshold)  # the point is the one measured at that threshold
    assert len(calls) == 2 * 10 + 2
    with pytest.raises(ValueError, match="iters=0 is invalid"):
        match_reuse_threshold(eval_fn, 0.5, iters=0)


def test_one_hot_plan_reuses_one_pair():
    plan = one_hot_plan(2, 1, num_steps=4, num_layers=3)
    assert [(i, j) for i, row in enumerate(plan) for j, r in enumerate(row) if r] == [(2, 1)]
    assert len(plan) == 4 and {len(row) for row in plan} == {3}


def test_fit_and_evaluate_policy_end_to_end(dit, tmp_path):
    path = tmp_path / "policy.pt"
    R = fit_and_evaluate_policy(dit, psnr, num_steps=4, train_seeds=[0], train_classes=[0, 1], test_seeds=[1],
                                test_classes=[2], per_class=1, cheap_quantile=0.5, n_validate=2, policy_path=path)
    assert list(R) == ["losses", "validation", "acc_train", "acc_test", "cheap_threshold", "gates", "policy",
                       "label_rate"]
    assert len(R["losses"]) == 300 and len(R["validation"]) == 2
    assert all(v["final_mse"] >= 0.0 and 1 <= v["step"] < 4 for v in R["validation"])
    assert 0.0 < R["policy"]["threshold"] < 1.0 and 0.0 <= R["policy"]["reuse"] <= 1.0
    assert load_policy(path) is not None  # the policy the evaluation used is on disk


def test_slider_grid_reads_warmup_from_the_config():
    rows = stored_traces("ddim")
    base = DQARConfig.preset("gates")
    assert base.warmup == 0.2
    grid = slider_grid(rows, base, n_tau=6, n_snr=4)
    late = slider_grid(rows, base.replace(warmup=0.5), n_tau=6, n_snr=4)
    assert grid["depths"] == late["depths"] == [0.25, 0.5, 1.0]
    assert grid["taus"][-1] == 1.0 and grid["snr_los"][0] == 0.0 and len(grid["taus"]) <= 6
    assert grid["taus"] == sorted(grid["taus"]) and grid["snr_los"] == sorted(grid["snr_los"])
    assert (late["taus"], late["snr_los"]) != (grid["taus"], grid["snr_los"])


def test_cache_errors_average_each_mode():
    errors = [dict(mode="fp16", rel_l2=v) for v in (0.001, 0.002, 0.006)] + [dict(mode="int8_tensor", rel_l2=0.02)]
    assert cache_errors(errors, modes=("fp16", "int8_tensor")) == pytest.approx({"fp16": 0.003, "int8_tensor": 0.02})
    with pytest.raises(ValueError, match="no rows of cache mode 'int8_channel'"):
        cache_errors(errors)
