"""Whole-stack reuse ("stack" granularity), fitted forecast weights, and the error-driven plan fit."""

import itertools

import numpy as np
import pytest
import torch

from dqar_lib import DQARConfig, sample
from dqar_lib.fitting.plan_fit import (
    BASE,
    calibrate_plans,
    fit_plan,
    fit_weights,
    forecast_errors,
    residual_trace,
    skip_gains,
    skip_rms,
)
from dqar_lib.method.cache import ReuseCache
from dqar_lib.method.serving import Serve


def test_stack_serves_what_per_block_forecasts_serve_under_one_plan(dit):
    """A forecast is linear in its computes, so with every layer on the same plan one forecast of the stack's
    residual gives the sum of the per-block forecasts: the same images, at one cache entry instead of L."""
    cfg = DQARConfig.preset("static", granularity="block", cache_mode="fp32", forecast_order=1)
    block = sample(dit, [1, 2], num_steps=10, seed=0, dqar=cfg, progress=False)
    stack = sample(dit, [1, 2], num_steps=10, seed=0, dqar=cfg.replace(granularity="stack"), progress=False)
    assert stack.stats["reuse_fraction"] == block.stats["reuse_fraction"] > 0
    assert stack.stats["per_layer_reuse"] == block.stats["per_layer_reuse"]
    torch.testing.assert_close(stack.latents, block.latents, rtol=1e-4, atol=1e-5)
    assert stack.stats["cache_entries"] == 1 < block.stats["cache_entries"]
    plain = sample(dit, [1, 2], num_steps=10, seed=0, dqar=cfg.replace(granularity="stack", forecast_order=0),
                   progress=False)
    assert not torch.equal(plain.latents, stack.latents)  # order 0 serves the residual as stored


def test_stack_off_is_bit_identical(dit):
    full = sample(dit, [1, 2], num_steps=6, seed=0, progress=False)
    off = sample(dit, [1, 2], num_steps=6, seed=0, dqar=DQARConfig.preset("forecast", enabled=False),
                 progress=False)
    assert torch.equal(full.latents, off.latents)


def test_stack_refuses_what_decides_per_block():
    with pytest.raises(ValueError, match="schedule"):
        DQARConfig.preset("gates", granularity="stack")
    with pytest.raises(ValueError, match="cfg_share"):
        DQARConfig(granularity="stack", cfg_share_from=0.5)


def test_fitted_weights_replace_the_forecast():
    c, A, B = ReuseCache(), torch.randn(2, 5, 8), torch.randn(2, 5, 8)
    for a in (0.0, 1.0, 2.0):
        c.store((0, "stack"), A + a * B, "fp32", at=a, depth=3)
    torch.testing.assert_close(c.get((0, "stack"), at=3.0, weights=(0.5, 0.5)), A + 1.5 * B)  # the last two
    torch.testing.assert_close(c.get((0, "stack"), at=3.0, weights=(1.0, 1.0, 1.0, 1.0)), A + 3.0 * B)  # too few
    with pytest.raises(ValueError, match=r"Serve.weights\[1\]"):
        Serve(order=1, weights=(None, (float("nan"),)))
    with pytest.raises(ValueError, match="order=0"):
        Serve(weights=((1.0,),))
    assert DQARConfig(serve=Serve(order=1, weights=(None, (0.2, 0.3, 0.5)))).history == 3


def test_fit_weights_recover_an_exact_combination():
    """R_s = 2 R_k - R_j exactly on a linear trajectory: the least-squares weights find it."""
    g = torch.Generator().manual_seed(0)
    A, B = torch.randn(2, 4, 6, generator=g), torch.randn(2, 4, 6, generator=g)
    R = torch.stack([A + s * B for s in range(6)])  # (S, B, n, D)
    skip = [False, False, True, False, True, True]
    w = fit_weights(R, skip, n=2)
    assert w[0] is None and w[1] is None and w[3] is None
    assert w[2] == pytest.approx((-1.0, 2.0), abs=1e-6)  # computes 0, 1 -> step 2
    assert sum(w[5]) == pytest.approx(1.0, abs=1e-6)  # computes 1, 3 -> step 5: any affine extrapolation


def _cost(e, g, skip):
    """A plan's predicted squared error: each skipped step's miss from the two computes before it."""
    done, cost = [], 0.0
    for s, skipped in enumerate(skip):
        if skipped:
            cost += (g[s] * e[done[-2], done[-1], s]) ** 2
        else:
            done.append(s)
    return cost


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fit_plan_is_the_exact_optimum(seed):
    rng = np.random.default_rng(seed)
    S = 9
    e = np.full((S, S, S), np.inf)
    for j, k, s in itertools.combinations(range(S), 3):
        e[j, k, s] = rng.uniform(0.01, 1.0) * (s - k) / (k - j)  # older computes extrapolate better or worse
    g = np.concatenate([[np.inf, np.inf], rng.uniform(0.1, 2.0, S - 2)])
    for skips in (0, 1, 3, 5, 7):
        skip, err = fit_plan(e, g, skips)
        best = min(_cost(e, g, [s in c for s in range(S)]) for c in itertools.combinations(range(2, S), skips))
        assert sum(skip) == skips and not skip[0] and not skip[1]
        assert err == pytest.approx(np.sqrt(_cost(e, g, skip)))  # the plan returned is the plan costed
        assert err == pytest.approx(np.sqrt(best))  # and no plan does better
    with pytest.raises(ValueError, match="skips=8"):
        fit_plan(e, g, 8)


def test_forecast_errors_vanish_on_a_linear_trajectory():
    A, B = torch.randn(1, 3, 4), torch.randn(1, 3, 4)
    R = torch.stack([A + s * B for s in range(5)])
    for fitted in (False, True):
        e = forecast_errors(R, fitted=fitted)
        assert np.where(np.isfinite(e), e, 0.0).max() < 1e-6  # float32 trajectories
        assert np.isinf(e[1, 1, 2]) and np.isinf(e[0, 2, 1])  # only j < k < s is defined


def test_calibrated_plan_skips_its_budget_and_serves_the_stack(dit):
    plans = calibrate_plans(dit, [1, 2], [0.25, 0.5], num_steps=8, seed=3, progress=False)
    for budget, (cfg, fit) in plans.items():
        assert sum(fit["skip"]) == round(budget * 8) and cfg.granularity == "stack" and cfg.serve.weights
        res = sample(dit, [1, 2], num_steps=8, seed=0, dqar=cfg, progress=False)
        assert res.stats["reuse_fraction"] == pytest.approx(budget)
    assert BASE.serve.order == 1
    with pytest.raises(ValueError, match="budget=1.0"):
        calibrate_plans(dit, [1], [1.0], num_steps=4)


def test_skip_rms_measures_one_skip_per_step_and_skip_gains_divides_by_its_forecasts_miss(dit):
    S = 5
    r = skip_rms(dit, [1, 2], num_steps=S, seed=3, first=1, progress=False)
    assert np.isnan(r[0]) and np.isfinite(r[1:]).all() and (r[1:] > 0).all()
    full = sample(dit, [1, 2], num_steps=S, seed=3, progress=False).images
    L = dit.config.num_layers
    plan = tuple(tuple([i == 3] * L) for i in range(S))  # skip step 3 alone, as skip_rms does
    img = sample(dit, [1, 2], num_steps=S, seed=3, dqar=BASE.replace(static_plan=plan), progress=False).images
    assert r[3] == pytest.approx(float((img - full).pow(2).mean().sqrt()), rel=1e-6)
    e = forecast_errors(residual_trace(dit, [1, 2], S, 3))
    g = skip_gains(dit, [1, 2], e, num_steps=S, seed=3, progress=False)
    assert np.isinf(g[:2]).all() and g[2:] == pytest.approx([r[s] / e[s - 2, s - 1, s] for s in range(2, S)])
    with pytest.raises(ValueError, match="first=0 is invalid"):
        skip_rms(dit, [1, 2], num_steps=S, first=0)
