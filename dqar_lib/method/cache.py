"""The reuse cache: quantized entries keyed by (layer, kind), with a byte budget, invalidation, NaN refusal."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .forecast import extrapolate
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
    a: float | None = None  # where it was computed (step index or timestep), for forecasting
    delta: bool = False  # stored as the difference from the compute before it (INT8 histories)


# cache mode -> (how a history's base is stored, how its later computes' deltas are stored)
DELTA_MODES = {"int8_tensor": ("int8_tensor", "int8_tensor"), "int8_channel": ("int8_channel", "int8_channel"),
               "delta": ("fp16", "int8_channel")}


def _values(hist: list[_Entry]) -> list[torch.Tensor]:
    """X_hat of each compute in a history (float32), summing the deltas onto the base."""
    out: list[torch.Tensor] = []
    for e in hist:
        d = dequantize(e.q).float()
        out.append(out[-1] + d if e.delta else d)
    return out


class ReuseCache:
    """Entries keyed by (layer, kind). `store` refuses past the budget; `lookup` serves only a valid entry.

    Counters: `refused` (budget), `invalidated` (batch/shape/dtype/device changed), `nonfinite`
    (NaN/Inf found in an entry, never served). Each refusal makes the layer recompute.
    A key holds its last `depth` computes (oldest first; `depth` > 1 for forecast reuse, dqar_lib.method.forecast),
    each stored in the cache mode, and the budget counts them all.
    """

    def __init__(self, budget_bytes: int | None = None):
        self.budget_bytes = budget_bytes
        self._entries: dict[tuple, list[_Entry]] = {}
        self.refused = self.invalidated = self.nonfinite = 0

    @property
    def nbytes(self) -> int:
        return sum(e.q.nbytes for hist in self._entries.values() for e in hist)

    def __len__(self) -> int:
        return len(self._entries)

    def drop(self, key: tuple) -> None:
        """Forget one entry (it went stale: its layer recomputed without storing)."""
        self._entries.pop(key, None)

    def clear(self) -> None:
        self._entries.clear()

    def reset_counters(self) -> None:
        self.refused = self.invalidated = self.nonfinite = 0

    def store(self, key: tuple, x: torch.Tensor, mode: str, calib=None, dynamic: bool = True,
              at: float | None = None, depth: int = 1) -> bool:
        """Quantize and keep `x` under `key` (computed at `at`), with up to `depth` - 1 earlier computes of the same
        signature; False (and the key dropped) if it would exceed the budget.

        mode "csb" needs `calib` (a dqar_lib.method.storage.CSBCalibration); `dynamic` then takes s per tensor.
        An INT8 history (depth > 1) is delta-coded: each later compute is stored as its difference from the one
        before, so the rounding errors of the history are shared rather than independent (see `_delta_history`).
        """
        old = self._entries.pop(key, [])
        old = [e for e in old if e.sig == signature(x)] if depth > 1 else []
        if old and mode in DELTA_MODES:
            new = self._delta_history(old, x, mode, at, depth)
        else:
            base_mode = DELTA_MODES[mode][0] if mode in DELTA_MODES else mode
            new = old[len(old) - depth + 1:] + [self._entry(x, base_mode, calib, dynamic, at)]
        if self.budget_bytes is not None and self.nbytes + sum(e.q.nbytes for e in new) > self.budget_bytes:
            self.refused += 1
            return False
        del old
        self._entries[key] = new
        return True

    @staticmethod
    def _entry(x: torch.Tensor, mode: str, calib=None, dynamic: bool = True, at: float | None = None,
               delta: bool = False, sig: tuple | None = None) -> _Entry:
        if mode == "csb":
            if calib is None:
                raise ValueError(f"cache mode 'csb' needs a calibration (got none for a {tuple(x.shape)} tensor)")
            q = quantize_calibrated(x, calib, dynamic)
        else:
            q = quantize(x, mode)
        # a scale taken from x is NaN/Inf exactly when x holds one: check the (C,) scale, not all of x
        from_x = mode in ("int8_tensor", "int8_channel") or (mode == "csb" and dynamic)
        finite = torch.isfinite(q.scale).all() if from_x else torch.isfinite(x).all()
        return _Entry(q, signature(x) if sig is None else sig, HostValue(finite), at, delta)

    def _delta_history(self, old: list[_Entry], x: torch.Tensor, mode: str, at: float | None,
                       depth: int) -> list[_Entry]:
        """`old` + x stored as INT8 x - X_hat_last; past `depth` computes, the oldest is folded into a new base.

        Forecast weights sum to 1, so an error shared by every stored value passes into the forecast as it is,
        while independent errors are amplified (by sqrt(5) for a linear step-ahead forecast). Delta coding makes
        the base's error the shared one and leaves each delta the rounding error of a much smaller tensor.
        """
        base_mode, delta_mode = DELTA_MODES[mode]
        values = _values(old)  # X_hat of each compute, float32
        # the delta is float32 whatever x is; the entry keeps x's signature (an fp16 model's history must match
        # its fp16 inputs, or every reuse after the second compute is refused as "invalidated")
        hist = old + [self._entry(x.float() - values[-1], delta_mode, at=at, delta=True, sig=signature(x))]
        drop = len(hist) - depth
        if drop > 0:  # re-base on the value that becomes the oldest (its rounding error is shared by all later)
            base = self._entry(values[drop].to(old[0].q.dtype), base_mode, at=hist[drop].a, sig=old[0].sig)
            hist = [base] + hist[drop + 1:]
        return hist

    def status(self, key: tuple, sig: tuple) -> str:
        """"ok", "missing", "invalidated" or "nonfinite"; a bad entry is dropped and counted."""
        hist = self._entries.get(key)
        if hist is None:
            return "missing"
        if hist[-1].sig != sig:
            del self._entries[key]
            self.invalidated += 1
            return "invalidated"
        if not all(e.finite.get() for e in hist):
            del self._entries[key]
            self.nonfinite += 1
            return "nonfinite"
        return "ok"

    def get(self, key: tuple, at: float | None = None, weights: tuple[float, ...] | None = None) -> torch.Tensor:
        """The dequantized entry, or (given `at`) its forecast at `at` from every compute kept; call `status` first.

        `weights` (oldest first, fitted: dqar_lib.fitting.plan_fit) combine the last len(weights) computes instead
        of Newton's polynomial, where that many are kept (else the forecast at `at`)."""
        hist = self._entries[key]
        if len(hist) == 1:
            return dequantize(hist[0].q)
        dtype, values = hist[0].q.dtype, _values(hist)
        if weights is not None and len(values) >= len(weights):
            return sum(w * v for w, v in zip(weights, values[len(values) - len(weights):])).to(dtype)
        if at is None:
            return values[-1].to(dtype)
        return extrapolate([(e.a, v) for e, v in zip(hist, values)], at).to(dtype)

    def depth(self, key: tuple) -> int:
        """How many computes `key` holds (0 if none)."""
        return len(self._entries.get(key, ()))
