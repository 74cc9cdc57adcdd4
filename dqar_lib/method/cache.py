"""The reuse cache: quantized entries keyed by (layer, kind), with a byte budget, invalidation, NaN refusal."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .host import HostValue
from .quant import QTensor, dequantize, quantize
from .storage import quantize_calibrated


def signature(x: torch.Tensor) -> tuple:
    """What an entry must match to be served: shape (batch and tokens included), dtype and device."""
    return (tuple(x.shape), x.dtype, x.device)


def storage_mode(cache_mode: str, kind: str) -> str:
    """Resolve "mixed": K stays fp16, everything else (V, attention outputs) is int8 per channel."""
    if cache_mode == "mixed":
        return "fp16" if kind == "k" else "int8_channel"
    return cache_mode


@dataclass
class _Entry:
    q: QTensor
    sig: tuple
    finite: HostValue


class ReuseCache:
    """Entries keyed by (layer, kind). `store` refuses past the budget; `lookup` serves only a valid entry.

    Counters: `refused` (budget), `invalidated` (batch/shape/dtype/device changed), `nonfinite`
    (NaN/Inf found in an entry, never served). Each refusal makes the layer recompute.
    """

    def __init__(self, budget_bytes: int | None = None):
        self.budget_bytes = budget_bytes
        self._entries: dict[tuple, _Entry] = {}
        self.refused = self.invalidated = self.nonfinite = 0

    @property
    def nbytes(self) -> int:
        return sum(e.q.nbytes for e in self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)

    def drop(self, key: tuple) -> None:
        """Forget one entry (it went stale: its layer recomputed without storing)."""
        self._entries.pop(key, None)

    def clear(self) -> None:
        self._entries.clear()

    def reset_counters(self) -> None:
        self.refused = self.invalidated = self.nonfinite = 0

    def store(self, key: tuple, x: torch.Tensor, mode: str, calib=None, dynamic: bool = True) -> bool:
        """Quantize and keep `x` under `key`; False (and the old entry dropped) if it would exceed the budget.

        mode "csb" needs `calib` (a dqar_lib.method.storage.CSBCalibration); `dynamic` then takes s per tensor.
        """
        old = self._entries.pop(key, None)
        if mode == "csb":
            if calib is None:
                raise ValueError(f"cache mode 'csb' needs a calibration for entry {key}")
            q = quantize_calibrated(x, calib, dynamic)
        else:
            q = quantize(x, mode)
        if self.budget_bytes is not None and self.nbytes + q.nbytes > self.budget_bytes:
            self.refused += 1
            return False
        del old
        # a scale taken from x is NaN/Inf exactly when x holds one: check the (C,) scale, not all of x
        from_x = mode in ("int8_tensor", "int8_channel") or (mode == "csb" and dynamic)
        finite = torch.isfinite(q.scale).all() if from_x else torch.isfinite(x).all()
        self._entries[key] = _Entry(q, signature(x), HostValue(finite))
        return True

    def status(self, key: tuple, sig: tuple) -> str:
        """"ok", "missing", "invalidated" or "nonfinite"; a bad entry is dropped and counted."""
        e = self._entries.get(key)
        if e is None:
            return "missing"
        if e.sig != sig:
            del self._entries[key]
            self.invalidated += 1
            return "invalidated"
        if not e.finite.get():
            del self._entries[key]
            self.nonfinite += 1
            return "nonfinite"
        return "ok"

    def get(self, key: tuple) -> torch.Tensor:
        """The dequantized entry; call `status` first."""
        return dequantize(self._entries[key].q)
