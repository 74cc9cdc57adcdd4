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


def static_plan(num_steps: int, num_layers: int, warmup: float, period: int) -> tuple[tuple[bool, ...], ...]:
    """A DiTFastAttn-style fixed plan: after the warmup steps, every layer reuses on every `period`-th step."""
    if period < 2:
        raise ValueError(f"static period must be at least 2 (1 would reuse forever), got {period}")
    first = math.ceil(warmup * num_steps)
    return tuple(tuple(s >= first and (s - first) % period == period - 1 for _ in range(num_layers))
                 for s in range(num_steps))
