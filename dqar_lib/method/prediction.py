"""The clean-sample estimate x0 that SNR_t is measured on, from what the model predicts (the scheduler says what).

Per prediction type, at a step with cumulative alpha a (DDPM-family schedulers) or noise level sigma (flow
matching, x_t = (1 - sigma) * x0 + sigma * noise)::

    epsilon        x0 = (x_t - sqrt(1 - a) * eps) / sqrt(a)
    v_prediction   x0 = sqrt(a) * x_t - sqrt(1 - a) * v
    sample         x0 = the model output
    flow           x0 = x_t - sigma * v          (rectified flow: v = noise - x0)
"""

from __future__ import annotations

import torch

from .noise import dit_alphas_cumprod
from .stats import predicted_x0

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample", "flow")


def prediction_type(scheduler) -> str:
    """"flow" for a flow-matching scheduler (it has `sigmas` and no `alphas_cumprod`), else the scheduler's
    `prediction_type` ("epsilon" without a scheduler, as DiT's)."""
    if scheduler is not None and getattr(scheduler, "alphas_cumprod", None) is None \
            and getattr(scheduler, "sigmas", None) is not None:
        return "flow"
    return getattr(getattr(scheduler, "config", None), "prediction_type", None) or "epsilon"


def clean_estimate(kind: str, x_t: torch.Tensor, out: torch.Tensor, alpha_bar: float | None = None,
                   sigma: float | None = None) -> torch.Tensor:
    """x0 from the model output `out` of prediction type `kind` (module docstring); float32."""
    if kind == "epsilon":
        return predicted_x0(x_t, out, alpha_bar)
    if kind == "v_prediction":
        return alpha_bar**0.5 * x_t.float() - (1 - alpha_bar) ** 0.5 * out.float()
    if kind == "sample":
        return out.float()
    if kind == "flow":
        return x_t.float() - sigma * out.float()
    raise ValueError(f"unknown prediction type {kind!r}; expected one of {PREDICTION_TYPES}")


def step_sigma(scheduler, step: int, t: float, num_train_timesteps: int = 1000) -> float:
    """A flow-matching step's sigma: the scheduler's `sigmas[step]` once `set_timesteps` ran, else t / T."""
    sigmas = getattr(scheduler, "sigmas", None)
    if sigmas is not None and 0 <= step < len(sigmas) - 1:
        return float(sigmas[step])
    return min(1.0, max(0.0, t / num_train_timesteps))


def step_x0(scheduler, x_t: torch.Tensor, out: torch.Tensor, t: float, step: int,
            num_train_timesteps: int = 1000) -> torch.Tensor | None:
    """x0 at this step for `scheduler`'s prediction type (None for a type not in PREDICTION_TYPES)."""
    kind = prediction_type(scheduler)
    if kind not in PREDICTION_TYPES:
        return None
    if kind == "flow":
        return clean_estimate(kind, x_t, out, sigma=step_sigma(scheduler, step, t, num_train_timesteps))
    acp = getattr(scheduler, "alphas_cumprod", None)
    if acp is None:
        acp = dit_alphas_cumprod()
    a = float(acp[min(int(round(t)), len(acp) - 1)])
    return clean_estimate(kind, x_t, out, alpha_bar=a)


def scheduler_timestep(scheduler, t: float | None, num_train_timesteps: int = 1000) -> float | None:
    """t on the scheduler's 0..T scale. A flow-matching family may pass its own transform of it (Flux t / 1000,
    Lumina2 1 - t / 1000): where `t` is none of the scheduler's timesteps (sigmas * T), it is read off the
    scheduler, sigmas[step_index] * T (index 0 before its first step); otherwise `t` is kept as given."""
    sigmas = getattr(scheduler, "sigmas", None) if prediction_type(scheduler) == "flow" else None
    if t is None or sigmas is None or len(sigmas) == 0:
        return t
    on_scale = [float(s) * num_train_timesteps for s in sigmas[:-1]]  # the last sigma (0) ends the schedule
    if not on_scale or any(abs(t - v) <= 1e-3 * max(1.0, abs(v)) for v in on_scale):
        return t
    idx = getattr(scheduler, "step_index", None) or 0
    return on_scale[min(idx, len(on_scale) - 1)]
