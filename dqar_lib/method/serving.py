"""How a reused tensor is served (as stored, or forecast from the last computes) and how the cache keeps it."""

from __future__ import annotations

import math
from dataclasses import dataclass

CACHE_MODES = ("fp32", "fp16", "int8_tensor", "int8_channel", "mixed", "csb", "delta")
FORECAST_ORDERS = (0, 1, 2)
FORECAST_ABSCISSAE = ("step", "t")


@dataclass(frozen=True)
class Serve:
    """How a reused tensor is served."""

    order: int = 0
    """0: as it was stored; 1 or 2: extrapolated (dqar_lib.method.forecast) from the layer's last 2 or 3 computes."""
    abscissa: str = "step"
    """What the forecast extrapolates in: "step" (the step index) or "t" (the scheduler's timestep)."""
    weights: tuple[tuple[float, ...] | None, ...] | None = None
    """Per step, fitted weights (oldest first) of the last computes a reuse at that step is served as, in place of
    the forecast (`dqar_lib.fitting.plan_fit` fits them with a plan); None, or a None row: the forecast."""

    def __post_init__(self):
        if self.order not in FORECAST_ORDERS:
            raise ValueError(f"Serve.order={self.order!r} is invalid: expected one of {FORECAST_ORDERS}")
        if self.abscissa not in FORECAST_ABSCISSAE:
            raise ValueError(f"Serve.abscissa={self.abscissa!r} is invalid: expected one of {FORECAST_ABSCISSAE}")
        for k, row in enumerate(self.weights or ()):
            if row is not None and not (row and all(isinstance(w, (int, float)) and math.isfinite(w) for w in row)):
                raise ValueError(f"Serve.weights[{k}]={row!r} is invalid: expected None or a non-empty tuple of "
                                 "finite numbers")
        if self.weights is not None and not self.order:
            raise ValueError("Serve.weights is invalid with order=0: fitted weights serve a forecast (order >= 1)")

    @property
    def history(self) -> int:
        """How many computes each cache entry keeps: order + 1, or the longest fitted weight row."""
        return max([self.order + 1] + [len(r) for r in self.weights or () if r is not None])


@dataclass(frozen=True)
class Store:
    """How cached tensors are kept."""

    mode: str = "int8_channel"
    """fp32, fp16, int8_tensor, int8_channel, mixed (K fp16, V/out int8), csb (INT8 with PTQ4DiT-style channel
    balancing from `calibration`), or delta (for forecasting: each layer's oldest kept compute in fp16, the later
    ones as per-channel INT8 differences; fp16 without forecasting). A forecast history in int8_tensor /
    int8_channel is delta-coded too, its base in INT8."""
    calibration: str | None = None
    """The calibration file for mode "csb" (a path, or a name under the data folder: "calibration/...")."""
    dynamic_scale: bool = True
    """csb: take the per-tensor scale from each stored tensor (True) or the calibrated static scale (False)."""
    budget_bytes: int | None = None
    """Refuse to store past this many bytes (the layer then recomputes); None: no limit."""

    def __post_init__(self):
        if self.mode not in CACHE_MODES:
            raise ValueError(f"Store.mode={self.mode!r} is invalid: expected one of {CACHE_MODES}")
        if (self.mode == "csb") != bool(self.calibration):
            raise ValueError(f"Store.calibration={self.calibration!r} is invalid with mode={self.mode!r}: mode 'csb' "
                             "needs a calibration file, and only it reads one")
        if not self.dynamic_scale and self.mode != "csb":
            raise ValueError("Store.dynamic_scale=False is invalid: only mode 'csb' has a static scale")
        if self.budget_bytes is not None and (not isinstance(self.budget_bytes, int) or self.budget_bytes < 0):
            raise ValueError(f"Store.budget_bytes={self.budget_bytes!r} is invalid: expected None or an int >= 0")
