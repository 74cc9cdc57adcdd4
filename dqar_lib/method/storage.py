"""The CSB cache format: how the running cache stores a tensor with a fitted channel balance, and its file.

A cached tensor X (B, N, C) is stored as Q = clip(round(X / b / s), -127, 127) with one per-tensor scale s and a
static per-channel balancing vector b (C,), and restored as X_hat = Q * s * b (PTQ4DiT's Channel-wise Salience
Balancing without a weight to absorb b). b, the static s and the SSC weights are fitted offline by
dqar_lib.fitting.cache_fit (notebooks/04_quantization); this module is what the controller needs at run time.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from .files import atomic_write, load_tagged
from .quant import QTensor, dequantize, quantize

FORMAT = "dqar-cache-calibration/1"
Key = tuple[int, str]  # (layer, kind)


@dataclass
class CSBCalibration:
    """What one cache key (layer, kind) is stored with: b (C,), the static scale s (0-d), the SSC weights eta (T,)."""

    b: torch.Tensor
    scale: torch.Tensor
    eta: torch.Tensor | None = None


# ---- storing with a calibration --------------------------------------------------------------------------
def quantize_calibrated(x: torch.Tensor, calib: CSBCalibration, dynamic: bool = False) -> QTensor:
    """Q = clip(round(X / b / s)) with the calibrated static s (or, if `dynamic`, s = max|X / b| / 127)."""
    if calib.b.shape != (x.shape[-1],):
        raise ValueError(f"calibration b has shape {tuple(calib.b.shape)}, but x has {x.shape[-1]} channels")
    xb = x.detach().float() / calib.b.to(x.device)  # (..., C)
    q = quantize(xb, "int8_tensor", scale=None if dynamic else calib.scale)
    return QTensor(q.data, q.scale, x.dtype, "csb", b=calib.b.to(x.device))


def dequantize_calibrated(q: QTensor, calib: CSBCalibration) -> torch.Tensor:
    """X_hat = Q * s * b, in the dtype X had."""
    return dequantize(QTensor(q.data, q.scale, q.dtype, q.mode, b=calib.b.to(q.data.device)))


# ---- files -----------------------------------------------------------------------------------------------
def save_csb_calibration(path: Path | str, calib: dict[Key, CSBCalibration], meta: dict | None = None) -> Path:
    """Write atomically with a format tag; `meta` holds plain values (alpha, model, steps ...)."""
    path = Path(path)
    entries = [{"layer": int(layer), "kind": str(kind), "b": c.b.detach().cpu().float(),
                "scale": c.scale.detach().cpu().float().reshape(()),
                "eta": None if c.eta is None else c.eta.detach().cpu().float()} for (layer, kind), c in calib.items()]
    with atomic_write(path, "wb") as f:
        torch.save({"format": FORMAT, "meta": dict(meta or {}), "entries": entries}, f)
    return path


def load_csb_calibration(path: Path | str) -> tuple[dict[Key, CSBCalibration], dict]:
    """Read `save_csb_calibration`'s file: (calib, meta). A missing, corrupt or foreign file is an error naming it."""
    path = Path(path)
    blob = load_tagged(path, FORMAT, "cache calibration", weights_only=True)
    try:
        calib = {(int(e["layer"]), e["kind"]): CSBCalibration(e["b"], e["scale"], e["eta"]) for e in blob["entries"]}
    except (KeyError, TypeError) as e:
        raise ValueError(f"{path} has a malformed calibration entry: {e!r}") from None
    for key, c in calib.items():
        if c.b.ndim != 1 or c.scale.ndim != 0:
            raise ValueError(f"{path}: entry {key} has b of shape {tuple(c.b.shape)} and scale of shape "
                             f"{tuple(c.scale.shape)}; expected (C,) and ()")
    return calib, blob.get("meta", {})

