"""The delta-coded INT8 history, pinned from outside (issue 35): whatever it stores internally (a base, INT8
differences, re-bases past its depth), each compute it keeps must decode to the tensor that was stored within the
INT8 step, and its forecast must be the forecast of those tensors. Guards `ReuseCache._delta_history` (which value a
full history re-bases on) and `_values` (each difference added to the value before it)."""

import pytest
import torch

from dqar_lib.method.cache import ReuseCache, signature
from dqar_lib.method.forecast import newton_weights

KEY = (0, "res")


def trajectory(n: int = 7):
    """n computes of a layer's output that move by about a third of their size each step, with outlier channels
    (a decoded value mixed up with its neighbour is off by far more than the INT8 step)."""
    g = torch.Generator().manual_seed(0)
    scale = torch.linspace(0.2, 4.0, 16)  # (C,) per-channel ranges
    A, B, C = (torch.randn(2, 6, 16, generator=g) * scale for _ in range(3))
    return [A + 0.35 * k * B + 0.02 * k * k * C for k in range(n)]


def decoded(c: ReuseCache, n: int) -> list[torch.Tensor]:
    """Each of the n computes a key keeps, oldest first: the one-hot combinations of its history."""
    return [c.get(KEY, weights=tuple(float(i == j) for i in range(n))) for j in range(n)]


def int8_step(xs) -> float:
    """The INT8 step of a per-tensor scale over these tensors (a bound on every per-channel step too)."""
    return max(float(x.abs().max()) for x in xs) / 127


@pytest.mark.parametrize("mode", ["int8_channel", "int8_tensor", "delta"])
@pytest.mark.parametrize("depth", [2, 3])
def test_a_delta_coded_history_decodes_to_the_stored_tensors(mode, depth):
    xs = trajectory()
    c = ReuseCache()
    # the base's step, a re-base's step and a difference's: a decoded value is within them of what was stored
    tol = 2 * int8_step(xs) + 2 * int8_step([b - a for a, b in zip(xs, xs[1:])])
    for k, x in enumerate(xs):
        c.store(KEY, x, mode, at=float(k), depth=depth)
        n = min(k + 1, depth)
        assert c.depth(KEY) == n and c.status(KEY, signature(x)) == "ok"
        kept = xs[k + 1 - n:k + 1]
        for j, (got, want) in enumerate(zip(decoded(c, n), kept)):
            err = float((got - want).abs().max())
            assert err <= tol, (f"{mode}, depth {depth}, after {k + 1} stores: kept compute {j} of {n} (step "
                                f"{k + 1 - n + j}) decodes {err:.3g} away from what was stored (INT8 bound {tol:.3g})")
        if n > 1:  # the forecast is the forecast of the stored tensors, within the weights' sum of errors
            w = newton_weights([float(a) for a in range(k + 1 - n, k + 1)], k + 1.0)
            want = sum(wj * xj for wj, xj in zip(w, kept))
            err = float((c.get(KEY, at=k + 1.0) - want).abs().max())
            assert err <= sum(abs(wj) for wj in w) * tol, f"{mode}, depth {depth}: the forecast after {k + 1} stores"


@pytest.mark.parametrize("mode", ["int8_channel", "delta"])
def test_a_full_history_rebases_on_the_compute_that_becomes_its_oldest(mode):
    """Past its depth the oldest kept compute is the one `depth` - 1 stores back, not the one before it: a forecast
    from the history lands where the forecast from the last `depth` stored tensors does."""
    xs = trajectory(5)
    c = ReuseCache()
    for k, x in enumerate(xs):
        c.store(KEY, x, mode, at=float(k), depth=2)
    (oldest, newest), forecast = decoded(c, 2), c.get(KEY, at=5.0)
    tol = 2 * int8_step(xs) + 2 * int8_step([b - a for a, b in zip(xs, xs[1:])])

    def off(a, b) -> float:
        return float((a - b).abs().max())

    assert off(oldest, xs[3]) <= tol < off(oldest, xs[2]), f"the oldest kept compute is {off(oldest, xs[3]):.3g} " \
        f"from step 3 and {off(oldest, xs[2]):.3g} from step 2 (INT8 bound {tol:.3g})"
    assert off(newest, xs[4]) <= tol, f"the newest kept compute is {off(newest, xs[4]):.3g} from step 4"
    linear = 2 * xs[4] - xs[3]
    assert off(forecast, linear) <= 3 * tol, f"the forecast at 5 is {off(forecast, linear):.3g} from 2 x_4 - x_3"
