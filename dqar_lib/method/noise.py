"""DiT's training noise schedule, in one place: the samplers' schedulers, the training scheduler and the
controller's SNR_t (when no scheduler is given) are all built from it."""

from __future__ import annotations

import functools

import torch

# DiT's training schedule (linear betas 1e-4..0.02 over 1000 steps); the embedded model was trained with it.
NOISE_SCHEDULE = dict(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02)


@functools.cache
def dit_alphas_cumprod() -> torch.Tensor:
    """(num_train_timesteps,) float64 alpha_bar_t = prod_{s<=t} (1 - beta_s) of NOISE_SCHEDULE (computed once)."""
    n, lo, hi = NOISE_SCHEDULE["num_train_timesteps"], NOISE_SCHEDULE["beta_start"], NOISE_SCHEDULE["beta_end"]
    return torch.cumprod(1 - torch.linspace(lo, hi, n, dtype=torch.float64), 0)
