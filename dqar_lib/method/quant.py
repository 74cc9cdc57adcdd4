"""INT8 storage of cached tensors: Q = clip(round(X / s), -127, 127), s = max|X| / 127.

Modes: "int8_tensor" (one scale), "int8_channel" (one scale per channel of the last dim),
"fp16" / "fp32" (passthrough casts). "mixed" is a cache policy (K fp16, V int8) resolved by the cache.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

QMAX = 127
_MIN_SCALE = 1e-12


@dataclass
class QTensor:
    """A stored tensor: `data` (int8 or float), `scale` (None, 0-d, or (C,)), and the dtype to restore.

    `b` (C,) is a calibrated channel balance (CSB, dqar_lib.fitting.cache_fit): X_hat = Q * s * b.
    """

    data: torch.Tensor
    scale: torch.Tensor | None
    dtype: torch.dtype
    mode: str
    b: torch.Tensor | None = None

    @property
    def nbytes(self) -> int:
        n = self.data.numel() * self.data.element_size()
        return n + (self.scale.numel() * self.scale.element_size() if self.scale is not None else 0)


def int8_scale(x: torch.Tensor, per_channel: bool) -> torch.Tensor:
    """s = max|X| / 127 over the whole tensor (0-d) or over all but the last dim ((C,))."""
    a = x.detach().abs().float()
    amax = a.reshape(-1, a.shape[-1]).amax(0) if per_channel else a.amax()  # (C,) or ()
    return amax.clamp_min(_MIN_SCALE) / QMAX


def quantize(x: torch.Tensor, mode: str, scale: torch.Tensor | None = None) -> QTensor:
    """Store `x` in `mode`; an explicit `scale` (e.g. a calibrated one) overrides max|X| / 127."""
    if mode == "fp32":
        return QTensor(x.detach().float(), None, x.dtype, mode)
    if mode == "fp16":
        return QTensor(x.detach().half(), None, x.dtype, mode)
    if mode not in ("int8_tensor", "int8_channel"):
        raise ValueError(f"unknown quantization mode {mode!r}; expected fp32, fp16, int8_tensor or int8_channel")
    s = int8_scale(x, mode == "int8_channel") if scale is None else scale.to(x.device, torch.float32)
    q = torch.clamp(torch.round(x.detach().float() / s), -QMAX, QMAX).to(torch.int8)
    return QTensor(q, s, x.dtype, mode)


def dequantize(q: QTensor) -> torch.Tensor:
    """Back to the original dtype: X_hat = Q * s."""
    if q.scale is None:
        return q.data.to(q.dtype)
    x = q.data.float() * q.scale
    return (x * q.b if q.b is not None else x).to(q.dtype)
