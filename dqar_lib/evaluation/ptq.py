"""A PTQ4DiT-style W8A8 fake-quantization baseline for a whole DiT, attached by hooks and removed exactly.

Every nn.Linear inside the transformer blocks computes Y = Q_a(X / b) Q_w(W * b)^T + bias, where Q_w is
per-output-channel INT8 (s = max_j abs(W'_ij) / 127 per row i) and Q_a per-tensor INT8 with a static scale
fitted on calibration runs. b (C_in,) is PTQ4DiT's Channel-wise Salience Balancing,

    ``b_j = clip(s_X_j ** alpha / s_W_j ** (1 - alpha), *b_clip)``;   alpha = 0.5: ``b_j = sqrt(s_X_j / s_W_j)``,

with s_W_j = max_i abs(W_ij) and s_X the activation salience pooled over calibration calls by SSC:
s_X = sum_t eta_t s_X_t, eta_t = softmax_t(-rho_t), rho_t = spearman(s_X_t, s_W) (adreamwu/PTQ4DiT,
models.py, `Attention.forward` / `Mlp.forward`). X / b and W * b cancel in full precision, so only rounding
changes. Without SSC, s_X = max_t s_X_t. The weight is swapped for its fake-quantized copy and the input
rewritten by a forward pre-hook; `remove_w8a8` puts the original Parameter objects back.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from ..fitting.cache_fit import salience, ssc_weights
from ..method.quant import QMAX, dequantize, quantize
from .methods import Method

_ATTR = "_dqar_w8a8"
SCOPE = "transformer_blocks"


def block_linears(model: nn.Module, scope: str = SCOPE) -> list[tuple[str, nn.Linear]]:
    """The nn.Linear modules under `scope` (the transformer blocks), in order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear) and n.startswith(scope + ".")]


def collect_activation_salience(model: nn.Module, run: Callable[[nn.Module], object],
                                scope: str = SCOPE) -> dict[str, torch.Tensor]:
    """Run `run(model)` with forward pre-hooks that record s_X_t = max abs(X[..., j]) at every call of every
    block linear: {name: s_X (T, C_in)}, one row per call (sampling step and run)."""
    rows: dict[str, list[torch.Tensor]] = {}

    def recorder(name: str):
        def pre(_mod, args):
            rows.setdefault(name, []).append(salience(args[0]).cpu())
        return pre

    handles = [m.register_forward_pre_hook(recorder(n)) for n, m in block_linears(model, scope)]
    try:
        with torch.no_grad():
            run(model)
    finally:
        for h in handles:
            h.remove()
    return {n: torch.stack(r) for n, r in rows.items()}  # (T, C_in) each


def sampling_run(labels=(0, 1, 2, 3), num_steps: int = 4, seeds=(0,), **sample_kw) -> Callable[[nn.Module], None]:
    """A calibration run for `collect_activation_salience`: dqar_lib.sample over `seeds`."""
    from ..models.sampling import sample

    def run(model: nn.Module) -> None:
        for seed in seeds:
            sample(model, list(labels), num_steps=num_steps, seed=seed, progress=False, **sample_kw)
    return run


def csb_balance(s_X: torch.Tensor, s_W: torch.Tensor, alpha: float = 0.5,
                b_clip: tuple[float, float] = (1e-2, 1e2)) -> torch.Tensor:
    """b_j = clip(s_X_j ** alpha / s_W_j ** (1 - alpha)): (C_in,). Saliences are floored at 1e-8."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha={alpha!r} is invalid: expected a number in [0, 1]")
    if not 0 < b_clip[0] <= b_clip[1]:
        raise ValueError(f"b_clip={b_clip!r} is invalid: expected 0 < lo <= hi")
    b = s_X.float().clamp_min(1e-8) ** alpha / s_W.float().clamp_min(1e-8) ** (1 - alpha)
    return b.clamp(*b_clip)


def fake_quant_weight(W: torch.Tensor) -> torch.Tensor:
    """Per-output-channel INT8 round trip of W (C_out, C_in): one scale per row."""
    return dequantize(quantize(W.detach().float().t(), "int8_channel")).t()  # (C_in, C_out) -> (C_out, C_in)


@dataclass
class W8A8Layer:
    """One quantized linear: its balancing b (C_in,) or None, static activation scale, original weight."""

    b: torch.Tensor | None
    act_scale: torch.Tensor
    weight: nn.Parameter
    hook: object = None


@dataclass
class W8A8Handle:
    """What `apply_w8a8` changed; `remove()` (or `remove_w8a8(model)`) undoes it exactly (twice is harmless)."""

    model: nn.Module
    layers: dict[str, W8A8Layer] = field(default_factory=dict)
    config: dict = field(default_factory=dict)

    def remove(self) -> None:
        mods = dict(self.model.named_modules())
        for name, layer in self.layers.items():
            layer.hook.remove()
            mods[name]._parameters["weight"] = layer.weight
        if getattr(self.model, _ATTR, None) is self:
            delattr(self.model, _ATTR)


def apply_w8a8(model: nn.Module, calib: Callable[[nn.Module], object] | dict[str, torch.Tensor],
               use_csb: bool = True, alpha: float = 0.5, use_ssc: bool = True,
               b_clip: tuple[float, float] = (1e-2, 1e2)) -> W8A8Handle:
    """Fake-quantize every linear in the transformer blocks to W8A8, PTQ4DiT-style.

    `calib` is a calibration run `fn(model)` (e.g. `sampling_run(...)`, called in full precision here) or its
    result from `collect_activation_salience`. `use_csb` balances X and W with b; `use_ssc` pools s_X over
    the calibration calls with PTQ4DiT's Spearman weights (else the max). Returns a handle; see `remove_w8a8`.
    """
    if getattr(model, _ATTR, None) is not None:
        raise RuntimeError(f"W8A8 is already applied to this {type(model).__name__}; call remove_w8a8 first")
    if callable(calib):
        calib = collect_activation_salience(model, calib)
    elif not isinstance(calib, dict):
        raise TypeError(f"calib must be a callable run or a dict of saliences, got {type(calib).__name__}")
    linears = block_linears(model)
    missing = [n for n, _ in linears if n not in calib]
    if not linears or missing:
        raise ValueError(f"calib has no activation salience for {missing[:3] or 'any block linear'}; "
                         "collect it on this model with collect_activation_salience")
    handle = W8A8Handle(model, config=dict(use_csb=use_csb, alpha=alpha, use_ssc=use_ssc, b_clip=b_clip))
    for name, lin in linears:
        s_X_t = calib[name].float()  # (T, C_in)
        W = lin.weight.detach()  # (C_out, C_in)
        if s_X_t.ndim != 2 or s_X_t.shape[1] != W.shape[1]:
            raise ValueError(f"calib[{name!r}] has shape {tuple(s_X_t.shape)}; expected (T, {W.shape[1]})")
        b = None
        if use_csb:
            s_W = W.abs().float().amax(0).cpu()  # (C_in,)
            s_X = (ssc_weights(s_X_t, s_W, sign=-1.0)[:, None] * s_X_t).sum(0) if use_ssc else s_X_t.amax(0)
            b = csb_balance(s_X, s_W, alpha, b_clip)
        amax = (s_X_t / b if b is not None else s_X_t).amax()  # max|X / b| over the calibration calls
        act_scale = amax.clamp_min(1e-12) / QMAX
        W_q = fake_quant_weight(W.float() * b.to(W.device) if b is not None else W)
        layer = W8A8Layer(b, act_scale, lin.weight)
        lin._parameters["weight"] = nn.Parameter(W_q.to(W.dtype), requires_grad=False)
        layer.hook = lin.register_forward_pre_hook(_act_quant_hook(layer))
        handle.layers[name] = layer
    setattr(model, _ATTR, handle)
    return handle


def _act_quant_hook(layer: W8A8Layer):
    def pre(_mod, args):
        x = args[0]
        xb = x.float() / layer.b.to(x.device) if layer.b is not None else x.float()  # X' = X / b
        x_q = dequantize(quantize(xb, "int8_tensor", scale=layer.act_scale)).to(x.dtype)
        return (x_q, *args[1:])
    return pre


def remove_w8a8(model: nn.Module) -> W8A8Handle | None:
    """Undo `apply_w8a8`: original weights and no hooks, so outputs are bit-identical again (None if not applied)."""
    handle = getattr(model, _ATTR, None)
    if handle is not None:
        handle.remove()
    return handle


class W8A8Peer(Method):
    """PTQ4DiT-style W8A8 as a benchmark method: `prepare` calibrates once, `apply` / `remove` per run.

    A second `apply` onto a model that holds W8A8 (this instance's or another's) is a RuntimeError."""

    def __init__(self, use_csb: bool = True, alpha: float = 0.5, use_ssc: bool = True, calib_steps: int = 10):
        self.name = "w8a8" + ("_csb" if use_csb else "")
        self.params = dict(use_csb=use_csb, alpha=alpha, use_ssc=use_ssc, calib_steps=calib_steps)
        self._salience = None
        self._handle: W8A8Handle | None = None

    def prepare(self, model, labels, **sample_kwargs) -> None:
        """Collect the activation salience on `calib_steps` steps of a run on seed + 1 (full precision)."""
        seed = sample_kwargs.get("seed", 0) + 1  # calibrate on another seed than the one measured
        run = sampling_run(labels=tuple(int(c) for c in labels), num_steps=self.params["calib_steps"], seeds=(seed,),
                           guidance_scale=sample_kwargs.get("guidance_scale"))
        self._salience = collect_activation_salience(model, run)

    def apply(self, model: nn.Module) -> None:
        """`apply_w8a8` with the prepared salience."""
        if self._salience is None:
            raise RuntimeError("W8A8Peer.prepare(model, labels) must run before apply")
        p = self.params
        self._handle = apply_w8a8(model, self._salience, use_csb=p["use_csb"], alpha=p["alpha"], use_ssc=p["use_ssc"])

    def remove(self, model: nn.Module) -> None:
        """Undo this peer's `apply_w8a8`: the original weights back, no hooks (a no-op unless applied to `model`)."""
        if self._handle is not None and getattr(model, _ATTR, None) is self._handle:
            remove_w8a8(model)
        self._handle = None
