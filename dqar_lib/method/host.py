"""Device scalars read on the host without stalling the device: the controller's only way to see a tensor."""

from __future__ import annotations

import torch


class HostValue:
    """A 0-d device tensor copied to the host asynchronously; `get()` reads it later as a Python float.

    On CPU this is a plain read. On CUDA the copy goes to pinned memory on the current stream and
    an event marks it; `get()` waits on that event only (work queued before it, typically one step
    earlier), never on the whole stream, so decisions made from it are no host sync of the hot path.
    """

    __slots__ = ("_t", "_event", "_value")

    def __init__(self, t: torch.Tensor):
        self._value = None
        if t.device.type == "cuda":
            self._t = torch.empty((), dtype=t.dtype, pin_memory=True)
            self._t.copy_(t.detach(), non_blocking=True)
            self._event = torch.cuda.Event()
            self._event.record()
        else:
            self._t, self._event = t.detach(), None

    def get(self) -> float:
        if self._value is None:
            if self._event is not None:
                self._event.synchronize()
            self._value = float(self._t)
        return self._value


def host_float(v: "HostValue | float | None") -> float | None:
    """None stays None; a HostValue is read; a float passes through."""
    return v.get() if isinstance(v, HostValue) else v
