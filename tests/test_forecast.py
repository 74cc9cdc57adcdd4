"""Forecast reuse: the extrapolation, the cache's history (delta-coded in INT8), the config, and the hooks."""

import pytest
import torch

from dqar_lib import DQARConfig, sample
from dqar_lib.method.cache import ReuseCache, signature
from dqar_lib.method.forecast import extrapolate, newton_weights
from dqar_lib.method.serving import Serve


def test_weights_reproduce_polynomials_of_their_order():
    a = [0.0, 2.0, 3.0]  # unequal spacing, as a layer that computes at irregular steps
    for order in (0, 1, 2):
        pts = a[len(a) - order - 1:]
        w = newton_weights(pts, 5.0)
        assert sum(w) == pytest.approx(1.0)  # a constant is forecast as itself
        f = [1.0 + 2 * x + (0.5 * x * x if order == 2 else 0.0) for x in pts]
        want = 1.0 + 2 * 5.0 + (0.5 * 25 if order == 2 else 0.0) if order else f[-1]
        assert sum(wj * fj for wj, fj in zip(w, f)) == pytest.approx(want)
    with pytest.raises(ValueError, match="must differ"):
        newton_weights([1.0, 1.0], 2.0)


def test_cache_forecasts_a_linear_history_exactly():
    c, A, B = ReuseCache(), torch.randn(2, 5, 8), torch.randn(2, 5, 8)
    for a in (0.0, 1.0, 2.0):  # depth 2 keeps the last two computes
        c.store((0, "res"), A + a * B, "fp32", at=a, depth=2)
    assert c.depth((0, "res")) == 2
    torch.testing.assert_close(c.get((0, "res"), at=4.0), A + 4.0 * B)
    torch.testing.assert_close(c.get((0, "res")), A + 2.0 * B)  # no abscissa: the last compute


def test_an_int8_history_is_delta_coded():
    """A slowly moving tensor with outlier channels: stored as base + INT8 delta, the step-ahead forecast is far
    closer than forecasting from two independently quantized computes."""
    g = torch.Generator().manual_seed(0)
    A = torch.randn(4, 16, 32, generator=g) * torch.linspace(0.1, 8.0, 32)  # (B, N, C), outlier channels
    B = 0.02 * torch.randn(4, 16, 32, generator=g)
    c = ReuseCache()
    for a in (0.0, 1.0):
        c.store((0, "res"), A + a * B, "int8_channel", at=a, depth=2)
    truth = A + 2.0 * B
    err = (c.get((0, "res"), at=2.0) - truth).norm() / truth.norm()
    from dqar_lib.method.quant import dequantize, quantize

    naive = extrapolate([(a, dequantize(quantize(A + a * B, "int8_channel"))) for a in (0.0, 1.0)], 2.0)
    assert err < 0.7 * (naive - truth).norm() / truth.norm()  # sqrt(5) amplification of independent errors


def test_delta_mode_keeps_an_fp16_base_and_int8_deltas():
    c, x = ReuseCache(), torch.randn(3, 8)
    c.store((0, "out"), x, "delta", at=0.0, depth=3)
    c.store((0, "out"), x + 0.01, "delta", at=1.0, depth=3)
    hist = c._entries[(0, "out")]
    assert [e.q.data.dtype for e in hist] == [torch.float16, torch.int8]
    assert c.nbytes == 3 * 8 * 2 + 3 * 8 + 8 * 4  # fp16 base, int8 delta and its (C,) fp32 scale


@pytest.mark.parametrize("mode", ["delta", "int8_channel"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_a_delta_coded_history_serves_a_model_of_any_dtype(mode, dtype):
    """An fp16 model's delta-coded history keeps its fp16 signature through deltas and re-bases (on the GPU run
    the delta's float32 signature refused every reuse after a layer's second compute as "invalidated")."""
    c, x = ReuseCache(), torch.randn(3, 8, dtype=dtype)
    for a in range(5):  # past depth: the oldest compute is folded into a new base
        c.store((0, "res"), x + 0.01 * a, mode, at=float(a), depth=2)
        assert c.status((0, "res"), signature(x)) == "ok" and c.depth((0, "res")) == min(a + 1, 2)
    assert c.invalidated == 0 and c.get((0, "res"), at=5.0).dtype == dtype


def test_an_fp16_model_reuses_as_planned_under_the_delta_cache():
    from dqar_lib.models.zoo import tiny_dit

    plan = tuple((s >= 2 and s % 3 != 0,) * 3 for s in range(12))  # 7 of 12 steps reuse the stack
    cfg = DQARConfig.preset("dqar", static_plan=plan, collect_stats=True)
    res = sample(tiny_dit().half(), [1, 2], num_steps=12, seed=0, progress=False, dqar=cfg)
    assert res.stats["invalidated"] == 0 and res.stats["reuse_fraction"] == pytest.approx(7 / 12)


def test_history_restarts_when_the_signature_changes_and_counts_in_the_budget():
    c = ReuseCache(budget_bytes=3 * 8 * 4 * 2)
    c.store((0, "out"), torch.randn(3, 8), "fp32", at=0.0, depth=3)
    assert c.store((0, "out"), torch.randn(3, 8), "fp32", at=1.0, depth=3)
    assert not c.store((0, "out"), torch.randn(3, 8), "fp32", at=2.0, depth=3)  # a third would pass the budget
    assert c.refused == 1
    c.store((0, "out"), torch.randn(2, 8), "fp32", at=3.0, depth=3)  # another batch: the history starts over
    assert c.depth((0, "out")) == 1 and c.status((0, "out"), signature(torch.randn(2, 8))) == "ok"


@pytest.mark.parametrize("field, value", [("order", 3), ("abscissa", "sigma")])
def test_config_refuses_bad_forecast_settings(field, value):
    with pytest.raises(ValueError, match=f"Serve.{field}"):
        Serve(**{field: value})
    with pytest.raises(ValueError, match="not K/V"):
        DQARConfig.preset("gates", granularity="kv", forecast_order=1)


@pytest.mark.parametrize("granularity", ["attn", "block"])
def test_forecast_changes_only_what_is_served(dit, granularity):
    """The same plan with order 0 and order 1: the same reuse, different (extrapolated) outputs."""
    cfg = DQARConfig.preset("static", granularity=granularity, cache_mode="fp32")
    plain = sample(dit, [1, 2], num_steps=8, seed=0, dqar=cfg, progress=False)
    linear = sample(dit, [1, 2], num_steps=8, seed=0, dqar=cfg.replace(forecast_order=1), progress=False)
    assert plain.stats["reuse_fraction"] == linear.stats["reuse_fraction"] > 0
    assert not torch.equal(plain.latents, linear.latents)
    again = sample(dit, [1, 2], num_steps=8, seed=0, dqar=cfg.replace(forecast_order=1, forecast_in="t"),
                   progress=False)
    torch.testing.assert_close(again.latents, linear.latents)  # DDIM's timesteps are affine in the step index


def test_front_loaded_plan_thins_its_computes():
    from dqar_lib.method.schedule import front_loaded_plan, static_plan

    plan = front_loaded_plan(50, 3, warmup=0.2, k_start=2, k_end=5, end_computes=2)
    rows = [r[0] for r in plan]
    assert not any(rows[:10]) and not any(rows[-2:]) and all(len(set(r)) == 1 for r in plan)
    first_half, second_half = rows[10:30], rows[30:48]
    assert sum(second_half) / len(second_half) > sum(first_half) / len(first_half)  # fewer computes later
    assert front_loaded_plan(20, 2, 0.2, 2, 2, end_computes=0) == static_plan(20, 2, 0.2, period=2)
    with pytest.raises(ValueError, match="k_start=0"):
        front_loaded_plan(20, 2, 0.2, 0, 2)
