"""Turning a controller trace (one row per (step, layer)) into arrays."""

from __future__ import annotations

import numpy as np


def trace_matrix(trace: list[dict], field: str) -> np.ndarray:
    """(steps, layers) array of one field; missing values become NaN."""
    if not trace:
        raise ValueError("the trace is empty: run a sampler with DQAR attached first")
    S = max(r["step"] for r in trace) + 1
    L = max(r["layer"] for r in trace) + 1
    dtype = bool if field == "reuse" else float
    m = np.zeros((S, L), dtype=bool) if dtype is bool else np.full((S, L), np.nan)
    for r in trace:
        v = r[field]
        if v is not None:
            m[r["step"], r["layer"]] = v
    return m
