"""What a fit and a front reading promise, pinned from outside (issue 35): a fitted plan skips the budget's share of
the steps rounded to the nearest step (the existing test's budgets give whole steps, where truncating agrees), and
the bar the front is read against holds a point's class accuracy within the tolerance of full compute's on both
sides. Guards `plan_fit.calibrate_plans` and `front.bar_point` / `front.speed_at_accuracy`."""

import pandas as pd
import pytest

from dqar_lib import calibrate_plans, sample
from dqar_lib.evaluation.analysis import bar_point, speed_at_accuracy


def test_a_fitted_plan_skips_its_budget_rounded_to_the_nearest_step(dit):
    steps = 6
    budgets = (0.3, 0.6)  # 1.8 and 3.6 steps: 2 and 4 skips (truncating gives 1 and 3)
    plans = calibrate_plans(dit, [1, 2], budgets, num_steps=steps, seed=3, progress=False)
    for b in budgets:
        cfg, fit = plans[b]
        want = round(b * steps)
        assert sum(fit["skip"]) == want, f"budget {b} at {steps} steps skips {sum(fit['skip'])}, not {want}"
        res = sample(dit, [1, 2], num_steps=steps, seed=0, dqar=cfg, progress=False)
        assert res.stats["reuse_fraction"] == pytest.approx(want / steps)  # and the plan served skips as many


def front(accuracies: dict[str, float]) -> pd.DataFrame:
    """A front whose faster points are further from full compute's accuracy 0.80, all well above the PSNR bar."""
    names = ["full", *accuracies]
    return pd.DataFrame(dict(psnr=[float("inf")] + [46.0] * len(accuracies),
                             speedup=[1.0] + [1.5 + k for k in range(len(accuracies))],
                             class_accuracy=[0.80, *accuracies.values()],
                             family=["full compute"] + ["DQAR"] * len(accuracies)), index=names)


@pytest.mark.parametrize("far", [0.90, 0.70])
def test_the_bar_refuses_a_point_far_from_full_computes_accuracy_on_either_side(far):
    """A point far above full compute's accuracy is as far off the distribution as one far below: neither meets the
    bar, however fast (a one-sided check would take the one above)."""
    df = front({"DQAR near": 0.81, "DQAR far": far})
    assert bar_point(df) == "DQAR near", f"accuracy {far} against full compute's 0.80 passed a 0.02 tolerance"
    assert bar_point(df, acc_tol=0.2) == "DQAR far"  # within a wide tolerance it is the fastest
    assert speed_at_accuracy(df.reset_index(names="method"))["DQAR"] == 1.5


def test_the_bar_holds_its_tolerance_at_its_edges():
    df = front({"DQAR low": 0.785, "DQAR high": 0.815, "DQAR over": 0.83})
    assert bar_point(df) == "DQAR high"
    assert bar_point(df.drop(index="DQAR high")) == "DQAR low"
