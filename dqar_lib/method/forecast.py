"""Forecast reuse: serve a skipped tensor extrapolated from its layer's last computes instead of as it was stored.

With computes f_0 .. f_k of one layer at abscissae a_0 < ... < a_k (the step index, or the scheduler's timestep),
the served value at a is Newton's interpolating polynomial through them, evaluated beyond the last point:

    F(a) = f[a_k] + f[a_k, a_(k-1)] (a - a_k) + f[a_k, a_(k-1), a_(k-2)] (a - a_k)(a - a_(k-1)) + ...

with f[...] the divided differences. Order 0 is plain reuse (F = f_k); order 1 is the linear extrapolation from
the last two computes that SeaCache applies to its residual; order 2 adds the curvature (TaylorSeer's finite
differences, here over unequal spacing, since a layer computes at irregular steps).
"""

from __future__ import annotations

import torch

ORDERS = (0, 1, 2)
ABSCISSAE = ("step", "t")


def newton_weights(a: list[float], at: float) -> list[float]:
    """Weights w_j with F(at) = sum_j w_j f_j for Newton's polynomial through (a_j, f_j); the a_j must differ.

    Linear in the f_j, so a forecast costs one weighted sum of the stored tensors. (k+1 points -> order k.)
    """
    k = len(a)
    if k == 0:
        raise ValueError("a forecast needs at least one compute")
    if len(set(a)) != k:
        raise ValueError(f"forecast abscissae must differ, got {a}")
    # Lagrange form of the same polynomial: w_j = prod_{m != j} (at - a_m) / (a_j - a_m)
    w = []
    for j in range(k):
        p = 1.0
        for m in range(k):
            if m != j:
                p *= (at - a[m]) / (a[j] - a[m])
        w.append(p)
    return w


def extrapolate(points: list[tuple[float, torch.Tensor]], at: float) -> torch.Tensor:
    """F(at) through `points` [(a_j, f_j), ...] (oldest first), in float32 and returned in f's dtype."""
    if len(points) == 1:
        return points[0][1]
    w = newton_weights([p[0] for p in points], at)
    out = sum(wj * f.float() for wj, (_, f) in zip(w, points))
    return out.to(points[-1][1].dtype)
