"""Statistics the gates read: attention entropy H_t, latent SNR_t, latent norm. Pure tensor functions."""

from __future__ import annotations

import math

import torch

EPS = 1e-12


def attention_entropy(attn: torch.Tensor) -> torch.Tensor:
    """Normalised entropy of attention rows, averaged: 1 for uniform rows, 0 for one-hot rows.

    attn: (..., n_rows, N) with rows summing to 1. Returns a 0-d tensor
    H = -(1 / (rows * log N)) * sum A log(A + eps).
    """
    n = attn.shape[-1]
    if n < 2:
        return attn.new_zeros(())
    h = -(attn * torch.log(attn + EPS)).sum(-1)  # (..., n_rows)
    return (h.mean() / math.log(n)).clamp(0.0, 1.0)


def sampled_attention_entropy(q: torch.Tensor, k: torch.Tensor, heads: int, n_rows: int, n_heads: int,
                              scale: float | None = None) -> torch.Tensor:
    """H_t from a sample of query rows and heads of projected q, k (B, N, heads*d): never a full attention.

    Rows and heads are taken at fixed strides (deterministic, no host sync), from the first batch element.
    """
    b, n, inner = q.shape
    d = inner // heads
    hs = torch.arange(0, heads, max(1, heads // min(n_heads, heads)), device=q.device)[:n_heads]
    rows = torch.arange(0, n, max(1, n // min(n_rows, n)), device=q.device)[:n_rows]
    q_s = q[0].view(n, heads, d)[rows][:, hs].transpose(0, 1).float()  # (h', r, d)
    k_s = k[0].view(k.shape[1], heads, d)[:, hs].transpose(0, 1).float()  # (h', N, d)
    logits = q_s @ k_s.transpose(1, 2) * (scale if scale is not None else d**-0.5)  # (h', r, N)
    return attention_entropy(logits.softmax(-1))


def predicted_x0(x_t: torch.Tensor, eps: torch.Tensor, alpha_bar: torch.Tensor | float) -> torch.Tensor:
    """x0 = (x_t - sqrt(1 - a) * eps) / sqrt(a), the scheduler's clean-sample estimate from an epsilon prediction."""
    a = torch.as_tensor(alpha_bar, dtype=torch.float32, device=x_t.device)
    return (x_t.float() - (1 - a).sqrt() * eps.float()) / a.sqrt()


def latent_snr(x0: torch.Tensor, x_t: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """SNR_t = ||x0||^2 / (||x_t - x0||^2 + eps), over the whole batch; a 0-d tensor."""
    x0, x_t = x0.float(), x_t.float()
    return x0.pow(2).sum() / ((x_t - x0).pow(2).sum() + eps)


def latent_norm(x_t: torch.Tensor) -> torch.Tensor:
    """||x_t|| per element (RMS), so it does not grow with batch or resolution; a 0-d tensor."""
    return x_t.float().pow(2).mean().sqrt()


def latent_change(x_t: torch.Tensor, x_prev: torch.Tensor) -> torch.Tensor:
    """||x_t - x_prev||_1 / ||x_prev||_1: the latent's relative L1 change over one step; a 0-d tensor."""
    x_t, x_prev = x_t.float(), x_prev.float()
    return (x_t - x_prev).abs().mean() / x_prev.abs().mean().clamp_min(1e-12)
