"""The layer schedule as data: which blocks may reuse at which point of sampling (shallow early, deep late)."""

from __future__ import annotations

import math


def progress(t: float, num_train_timesteps: int = 1000) -> float:
    """Sampling progress in [0, 1] from the timestep: 0 at pure noise, 1 at the clean sample.

    Reading progress off t (rather than a step count) keeps the schedule the same for any scheduler.
    """
    return min(1.0, max(0.0, 1.0 - t / num_train_timesteps))


def schedule_depth(s: float, warmup: float, depth_start: float, depth_end: float) -> float:
    """Fraction of blocks (from the shallowest) that may reuse at progress s; 0 during warmup."""
    if s < warmup:
        return 0.0
    span = max(1e-9, 1.0 - warmup)
    return depth_start + (depth_end - depth_start) * min(1.0, (s - warmup) / span)


def layer_allowed(layer: int, num_layers: int, depth: float) -> bool:
    """Block `layer` (0 = shallowest) may reuse if it lies within the first ceil(depth * num_layers) blocks."""
    return layer < math.ceil(depth * num_layers - 1e-9)


def streak_cap(s: float, warmup: float, cap_start: int, cap_end: int | None) -> int:
    """The cap on consecutive reuses at progress s: `cap_start`, or (with `cap_end`) rounded linearly from
    cap_start right after warmup to cap_end at s = 1."""
    if cap_end is None:
        return cap_start
    span = max(1e-9, 1.0 - warmup)
    return round(cap_start + (cap_end - cap_start) * min(1.0, max(0.0, (s - warmup) / span)))


def profile_cap(s: float, profile: tuple[tuple[float, int], ...] | None, default: int) -> int:
    """The cap of a streak profile ((s_1, c_1), ...) at progress s: c_k of the last s_k <= s (`default` before s_1)."""
    cap = default
    for s_k, c_k in profile or ():
        if s < s_k:
            break
        cap = c_k
    return cap


def static_plan(num_steps: int, num_layers: int, warmup: float, period: int) -> tuple[tuple[bool, ...], ...]:
    """A DiTFastAttn-style fixed plan: after the warmup steps, every layer reuses on every `period`-th step."""
    if period < 2:
        raise ValueError(f"static period must be at least 2 (1 would reuse forever), got {period}")
    first = math.ceil(warmup * num_steps)
    return tuple(tuple(s >= first and (s - first) % period == period - 1 for _ in range(num_layers))
                 for s in range(num_steps))


def front_loaded_plan(num_steps: int, num_layers: int, warmup: float, k_start: int, k_end: int,
                      end_computes: int = 2) -> tuple[tuple[bool, ...], ...]:
    """A fixed plan whose computes thin out as sampling goes on (ProCache's and SmoothCache's lesson: early steps
    decide the sample, late ones may be forecast): after the warmup steps, one compute every k steps, k growing
    linearly from `k_start` right after warmup to `k_end` at the end; the last `end_computes` steps compute.

    Every layer follows the same plan (a whole-stack skip). k = 2 everywhere is `static_plan(..., period=2)`.
    """
    if not (1 <= k_start and 1 <= k_end):
        raise ValueError(f"compute intervals must be >= 1, got k_start={k_start}, k_end={k_end}")
    if end_computes < 0:
        raise ValueError(f"end_computes must be >= 0, got {end_computes}")
    first, reuse, s = math.ceil(warmup * num_steps), [False] * num_steps, math.ceil(warmup * num_steps)
    while s < num_steps:
        k = round(k_start + (k_end - k_start) * (s - first) / max(1, num_steps - 1 - first))
        for j in range(1, k):
            if s + j < num_steps:
                reuse[s + j] = True
        s += max(1, k)
    for j in range(min(end_computes, num_steps)):
        reuse[num_steps - 1 - j] = False
    return tuple(tuple(r for _ in range(num_layers)) for r in reuse)
