"""Real low-bit weights for the transformer blocks' linear layers through torchao, as a benchmark method.

PTQ4DiT-style W8A8 in `dqar_lib.evaluation.ptq` is fake quantization (fp weights rounded to the INT8 grid, fp matmuls):
it measures the quality cost of 8 bits, never their speed. `TorchaoPeer` runs real kernels instead:

    rows = bench_sampling(model, labels, {"full": None, "torchao int8": TorchaoPeer("int8_dynamic")})

Modes: "int8_weight_only" (INT8 weights, fp activations), "int8_dynamic" (INT8 weights and per-token
dynamically quantized INT8 activations, integer matmuls; runs on CPUs and GPUs), "float8_dynamic" (FP8 e4m3
weights and activations; needs a GPU with FP8 units, e.g. an H100). The quantized weights are built once
(`prepare`) and swapped in and out per run, so `remove` restores the model bit-identically.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from .methods import Method

MODES = ("int8_weight_only", "int8_dynamic", "float8_dynamic")
SCOPE = "transformer_blocks"  # only the blocks' linears: embeddings, adaLN-single and the final layer stay as they are
_ATTR = "_dqar_torchao"  # set on a model while a TorchaoPeer is applied to it


def _config(mode: str):
    from torchao.quantization import (
        Float8DynamicActivationFloat8WeightConfig,
        Int8DynamicActivationInt8WeightConfig,
        Int8WeightOnlyConfig,
    )

    return {"int8_weight_only": Int8WeightOnlyConfig, "int8_dynamic": Int8DynamicActivationInt8WeightConfig,
            "float8_dynamic": Float8DynamicActivationFloat8WeightConfig}[mode]()


def block_linears(model: nn.Module, scope: str = SCOPE) -> dict[str, nn.Linear]:
    """The linear layers inside `scope` (the transformer blocks), by qualified name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear) and n.startswith(scope + ".")}


def quantized_weights(model: nn.Module, mode: str) -> dict[str, nn.Parameter]:
    """torchao-quantized weights of the blocks' linears, computed on a copy (the model is left untouched)."""
    if mode not in MODES:
        raise ValueError(f"torchao mode {mode!r} is unknown; expected one of {MODES}")
    if mode == "float8_dynamic" and not (torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 9)):
        raise RuntimeError("torchao mode 'float8_dynamic' needs a GPU with FP8 units (compute capability >= 8.9, "
                           "e.g. an H100); use 'int8_dynamic' on this machine")
    from torchao.quantization import quantize_

    names = set(block_linears(model))
    if not names:
        raise ValueError(f"{type(model).__name__} has no linear layers under {SCOPE!r} to quantize")
    twin = copy.deepcopy(model)
    quantize_(twin, _config(mode), filter_fn=lambda m, fqn: fqn in names)
    return {n: m.weight for n, m in block_linears(twin).items()}


class TorchaoPeer(Method):
    """torchao low-bit weights as a benchmark method: `prepare` quantizes once, `apply` / `remove` swap weights.

    A second `apply` onto a model that holds torchao weights (this instance's or another's) is a RuntimeError."""

    def __init__(self, mode: str = "int8_dynamic"):
        if mode not in MODES:
            raise ValueError(f"torchao mode {mode!r} is unknown; expected one of {MODES}")
        self.name, self.params = f"torchao_{mode}", dict(mode=mode)
        self._quantized: dict[str, nn.Parameter] | None = None
        self._original: dict[str, nn.Parameter] = {}

    def prepare(self, model: nn.Module, labels=None, **sample_kwargs) -> None:
        """Quantize the blocks' linear weights once, on a copy of the model."""
        self._quantized = quantized_weights(model, self.params["mode"])

    def apply(self, model: nn.Module) -> None:
        """Swap the quantized weights in, keeping the originals."""
        if self._quantized is None:
            raise RuntimeError("TorchaoPeer.prepare(model, labels) must run before apply")
        if getattr(model, _ATTR, None) is not None:
            raise RuntimeError(f"torchao weights are already applied to this {type(model).__name__} "
                               f"({getattr(model, _ATTR).name}); call remove first")
        linears = block_linears(model)
        if set(linears) != set(self._quantized):
            raise ValueError("TorchaoPeer was prepared on another model: its quantized layers do not match")
        for n, lin in linears.items():
            self._original[n] = lin.weight
            lin.weight = self._quantized[n]
        setattr(model, _ATTR, self)

    def remove(self, model: nn.Module) -> None:
        """Put the original Parameter objects back (a no-op unless this peer is applied to `model`)."""
        if getattr(model, _ATTR, None) is not self:
            return
        for n, lin in block_linears(model).items():
            if n in self._original:
                lin.weight = self._original.pop(n)
        delattr(model, _ATTR)
