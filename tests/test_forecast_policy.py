"""The forecast policy: its labels (streak_errors), its metric (roc_auc), its signals in the controller, its fit."""

import math

import numpy as np
import pytest
import torch

from dqar_lib import DQARConfig
from dqar_lib.evaluation.metrics import psnr
from dqar_lib.fitting.forecast_policy import SIGNALS, fit_and_evaluate_forecast_policy, roc_auc, streak_errors
from dqar_lib.method.policy import ATTN_FEATURES, FEATURES, ReusePolicy, load_policy, policy_features, save_policy
from dqar_lib.method.stats import latent_change
from dqar_lib.models.sampling import sample


def test_streak_errors_vanish_on_a_polynomial_of_the_forecasts_order():
    s = torch.arange(12.0, dtype=torch.float64)
    base = torch.randn(5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    R_lin = (1.0 + 0.5 * s)[:, None] * base  # (S, 5), linear in the step
    R_quad = (1.0 + 0.5 * s + 0.1 * s**2)[:, None] * base
    k3 = (0, 1, 2)
    e1, e2 = streak_errors(R_lin, order=1, streaks=k3), streak_errors(R_quad, order=2, streaks=k3)
    for e, order in ((e1, 1), (e2, 2)):  # exact wherever the whole history exists: s - (order + 1)(k + 1) >= 0
        full = [e[t, j] for j, k in enumerate(k3) for t in range(12) if t >= (order + 1) * (k + 1)]
        assert max(full) < 1e-9
    assert np.nanmin(streak_errors(R_quad, order=1, streaks=k3)) > 1e-3  # a line misses the curvature
    # near the start fewer computes exist and the forecast's order drops, as at runtime: at step 1 a copy of step 0
    assert e1[1, 0] == pytest.approx(float((R_lin[1] - R_lin[0]).norm() / R_lin[1].norm()))
    assert e2[2, 0] > 1e-3  # step 2 has two computes: a line, which misses the curvature
    # NaN only where no compute precedes: s - k - 1 < 0
    nan = [(t, k) for k in k3 for t in range(12) if np.isnan(e1[t, k])]
    assert nan == [(0, 0), (0, 1), (1, 1), (0, 2), (1, 2), (2, 2)]


def test_streak_errors_forecast_from_computes_spaced_a_streak_apart():
    R = torch.zeros(8, 1)
    R[3] = 1.0  # a spike at step 3: any forecast that reads step 3 misses by the spike's extrapolation
    e = streak_errors(R + 1.0, order=1, streaks=(0, 1))
    # streak 1 at step 7 forecasts from steps 5 and 3 (reads the spike); at step 6 from steps 4 and 2 (does not;
    # consecutive computes 4 and 3 would)
    assert e[6, 1] < 1e-12 and e[7, 1] > 0.1
    with pytest.raises(ValueError, match="order=0 is invalid"):
        streak_errors(R, order=0)


def test_roc_auc():
    y = torch.tensor([1.0, 1.0, 0.0, 0.0])
    assert roc_auc(torch.tensor([0.9, 0.8, 0.2, 0.1]), y) == 1.0
    assert roc_auc(torch.tensor([0.1, 0.2, 0.8, 0.9]), y) == 0.0
    assert roc_auc(torch.tensor([0.5, 0.5, 0.5, 0.5]), y) == 0.5
    assert roc_auc(torch.tensor([0.9, 0.1, 0.5, 0.05]), y) == 0.75
    with pytest.raises(ValueError, match="both labels: 2 cheap and 0 costly"):
        roc_auc(torch.tensor([0.1, 0.2]), torch.tensor([1.0, 1.0]))


def test_a_policy_reads_only_its_features_and_its_file_keeps_them(tmp_path):
    policy = ReusePolicy(hidden=8, features=("progress", "streak"))
    f = torch.randn(6, len(FEATURES))
    g = f.clone()
    g[:, [0, 1, 2, 4, 5]] = torch.randn(6, 5)  # every column it does not read
    assert torch.equal(policy(f), policy(g))
    save_policy(policy, tmp_path / "p.pt")
    loaded = load_policy(tmp_path / "p.pt")
    assert loaded.features == ("progress", "streak") and torch.equal(loaded(f), policy(f))
    assert ReusePolicy().features == ATTN_FEATURES  # the attention policy's five, as its shipped file has them
    with pytest.raises(ValueError, match=r"features \('depth',\) are invalid"):
        ReusePolicy(features=("depth",))
    with pytest.raises(ValueError, match=r"expected features \(n, 7\)"):
        policy(f[:, :5])


def test_policy_features_carry_the_change_and_each_layers_streak():
    f = policy_features([0.5, None], 4.0, 2.0, 0.3, 2, x_change=0.07, streaks=[2, 0])
    assert f.shape == (2, len(FEATURES))
    assert f[:, FEATURES.index("x_change")].tolist() == pytest.approx([0.07, 0.07])
    assert f[:, FEATURES.index("streak")].tolist() == [2.0, 0.0]
    assert f[0, 1] == pytest.approx(math.log(4.0)) and f[1, 0] == 1.0
    neutral = policy_features([None], None, None, 0.0, 1)
    assert neutral[0, FEATURES.index("x_change")] == 0.0 and neutral[0, FEATURES.index("streak")] == 0.0
    nan = float("nan")  # a missing value read back from a table is NaN: the same neutral numbers
    assert torch.equal(policy_features([nan], nan, nan, 0.0, 1, x_change=nan), neutral)


def _streak_policy(path):
    """A policy reading only the streak: p ~ 1 right after a compute, p ~ 0 once it has reused."""
    policy = ReusePolicy(depth=0, features=("streak",))
    with torch.no_grad():
        policy.net[0].weight.fill_(-20.0)
        policy.net[0].bias.fill_(10.0)
    save_policy(policy, path)


def test_the_controller_feeds_the_policy_its_streak_and_measures_only_what_it_reads(tmp_path, dit):
    _streak_policy(tmp_path / "streak.pt")
    cfg = DQARConfig.preset("dqar_policy", policy_path=str(tmp_path / "streak.pt"), end_computes=0)
    res = sample(dit, [0, 1], num_steps=7, seed=0, dqar=cfg, progress=False)
    first = [r["reuse"] for r in res.controller.trace() if r["layer"] == 0]
    assert first == [False, True, False, True, False, True, False]  # reuse, then compute: the streak is read
    assert not res.controller.wants_entropy()  # the policy does not read H_t: no entropy is measured


def test_x_change_is_the_latents_relative_l1_change_over_the_last_step(dit):
    latents = []
    def keep(_m, args, kwargs):
        latents.append(kwargs.get("hidden_states", args[0] if args else None).clone())

    hook = dit.register_forward_pre_hook(keep, with_kwargs=True)
    try:
        res = sample(dit, [0, 1], num_steps=5, seed=0, dqar=DQARConfig.preset("off", collect_stats=True),
                     guidance_scale=1.0, progress=False)
    finally:
        hook.remove()
    seen = [r["x_change"] for r in res.controller.trace() if r["layer"] == 0]
    # step s decides on the change between the latents of steps s - 2 and s - 1 (one step late, as ||x_t||)
    assert seen[:2] == [None, None]
    for s in range(2, 5):
        assert seen[s] == pytest.approx(float(latent_change(latents[s - 1], latents[s - 2])), rel=1e-5)


def test_fit_and_evaluate_runs_end_to_end_and_refuses_overlap(tmp_path, dit):
    kw = dict(num_steps=8, train_labels=[0, 1], train_seeds=[5], test_labels=[2, 3], test_seeds=[6],
              thresholds=(0.5,), policy_path=tmp_path / "fp.pt", progress_bar=False)
    r = fit_and_evaluate_forecast_policy(dit, psnr, **kw)
    assert load_policy(tmp_path / "fp.pt").features == SIGNALS
    assert [a["dropped"] for a in r["ablation"]] == ["none", *SIGNALS]
    assert {row["split"] for row in r["rows"]} == {"train", "test"} and 0.0 <= r["auc_test"] <= 1.0
    assert 0.0 <= r["preset"]["reuse"] <= 1.0 and len(r["curve"]) == 1
    with pytest.raises(ValueError, match=r"share seeds \[5\]"):
        fit_and_evaluate_forecast_policy(dit, psnr, **(kw | dict(test_seeds=[5])))


def test_the_policy_plots_draw_what_they_are_given():
    import matplotlib.pyplot as plt
    import pandas as pd

    from dqar_lib.publish import plots

    rows = pd.DataFrame(dict(step=[2, 2, 2, 3, 3, 3, 3], streak=[0, 0, 0, 0, 0, 1, 1],
                             cost=[1.0, 2.0, 6.0, 2.0, 2.0, 5.0, 7.0]))
    fig, (a, b) = plt.subplots(1, 2)
    plots.skip_costs(a, rows)
    lines = a.get_lines()
    assert len(lines) == 2 and lines[0].get_xydata().tolist() == [[2, 2.0], [3, 2.0]]  # medians over runs
    assert lines[1].get_xydata().tolist() == [[3, 6.0]] and a.get_yscale() == "log"
    curve = [dict(threshold=0.2, psnr=40.0, reuse=0.6), dict(threshold=0.8, psnr=45.0, reuse=0.4)]
    plots.knob_curve(b, curve, dict(psnr=44.0, reuse=0.5), "preset")
    assert b.get_lines()[0].get_xydata().tolist() == [[0.6, 40.0], [0.4, 45.0]]
    assert b.get_lines()[1].get_xydata().tolist() == [[0.5, 44.0]] and b.get_xlabel() == "reuse fraction"
    assert [t.get_text() for t in b.texts] == ["0.2", "0.8"]
    plt.close(fig)
