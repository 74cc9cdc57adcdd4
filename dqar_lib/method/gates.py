"""The reuse gates: pure functions of host-side numbers, returning plain Python booleans."""

from __future__ import annotations

import math


def tau_for_prompt(tau: float, p: int | None = None, tau_slope: float = 0.0, p_ref: int = 77) -> float:
    """tau(p): the entropy threshold for a prompt of p tokens; class labels (p=None) keep tau constant.

    Longer prompts spread cross-conditioned attention, so their self-attention entropy runs higher;
    tau(p) = tau + tau_slope * log(p / p_ref), clipped to [0, 1].
    """
    if p is None or tau_slope == 0.0:
        return tau
    if p <= 0:
        raise ValueError(f"prompt length p must be positive, got {p}")
    return min(1.0, max(0.0, tau + tau_slope * math.log(p / p_ref)))


def entropy_gate(H_t: float | None, tau: float) -> bool:
    """Reuse only if the attention is peaked enough: H_t < tau. Unknown or NaN H_t never passes."""
    return H_t is not None and H_t < tau


def snr_gate(snr_t: float | None, snr_lo: float, snr_hi: float) -> bool:
    """Reuse only inside the SNR band: snr_lo <= SNR_t <= snr_hi. Unknown or NaN SNR never passes."""
    return snr_t is not None and snr_lo <= snr_t <= snr_hi


def change_gate(change: float | None, delta: float) -> bool:
    """Reuse only while the layer's input has moved little since it last computed: change < delta.

    `change` is the relative L1 change ||h_s - h_c||_1 / ||h_c||_1 of the input h since its last compute c
    (TeaCache's and SeaCache's indicator, here per layer). Unknown or NaN never passes.
    """
    return change is not None and change < delta


def streak_gate(streak: int, max_streak: int) -> bool:
    """Cap on consecutive reuses: a layer that reused `streak` times in a row must recompute at max_streak."""
    return streak < max_streak
