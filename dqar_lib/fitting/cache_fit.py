"""Fitting the INT8 reuse cache's CSB calibration after PTQ4DiT: Channel-wise Salience Balancing (CSB) with
Spearman's-rho-guided Salience CSBCalibration (SSC).

A cached tensor X (B, N, C) is stored as Q = clip(round(X / b / s), -127, 127) with one static per-tensor
scale s and a static per-channel balancing vector b (C,), and restored as X_hat = Q * s * b. Dividing by b
flattens the channel salience s(X)_j = max abs(X[..., j]), so a single scale no longer wastes its 255 levels on
a few outlier channels; like per-channel INT8 it protects the small channels, but b and s are fitted once
offline, so storing needs no max-reduction and one scale per tensor.

The storage format (CSBCalibration, quantize_calibrated, the file) is dqar_lib.method.storage; this module
fits it offline from sampling runs.

PTQ4DiT (Wu et al. 2024, adreamwu/PTQ4DiT, models.py: `Attention.forward`, `Mlp.forward`) balances an
activation against the *next weight*, b_j = sqrt(s(X)_j / s(W)_j), pushing salience into W
(see dqar_lib.evaluation.ptq).
A cached tensor has no weight to absorb it, so here b_j = (s_j / G) ** alpha with G = geomean(s): alpha = 0 is
plain per-tensor INT8, alpha = 1 gives every channel the same salience G, and alpha = 0.5 is PTQ4DiT's rule
against a flat weight (s(W)_j = G). G only fixes the overall size of b (prod b = 1); the error does not
depend on it, since a global factor on b is absorbed by s.
"""

from __future__ import annotations

import torch
from scipy.stats import spearmanr

from ..method.quant import QMAX, dequantize, quantize
from ..method.storage import CSBCalibration, Key, dequantize_calibrated, quantize_calibrated

KINDS = ("out", "k", "v")
MODES = ("fp16", "int8_tensor", "int8_channel", "csb", "csb_ssc")


# ---- collecting cached tensors ---------------------------------------------------------------------------
def collect_cache_tensors(model: torch.nn.Module, labels, num_steps: int = 10, seed: int = 0,
                          kinds: tuple[str, ...] = ("out",), max_per_layer: int | None = None,
                          **sample_kw) -> dict[Key, list[tuple[float, torch.Tensor]]]:
    """Sample once without reuse and record what the cache would hold: {(layer, kind): [(t, X (B, N, C)), ...]}.

    The cache keeps only its latest entry per key, so forward hooks on the self-attention modules (kind "out")
    or their to_k / to_v projections record every step instead. `max_per_layer` keeps that many evenly spaced
    steps (None: all). Tensors are float32 on the CPU; `sample_kw` goes to dqar_lib.sample (guidance_scale ...).
    Run it on the bare model, or with a DQAR config that never reuses: a served entry would be recorded too.
    """
    from ..method.hooks import self_attention_modules
    from ..models.sampling import sample

    if not kinds or any(k not in KINDS for k in kinds) or ("out" in kinds and len(kinds) > 1):
        raise ValueError(f"kinds={kinds!r} is invalid: expected ('out',) or a non-empty subset of ('k', 'v')")
    if max_per_layer is not None and max_per_layer <= 0:
        raise ValueError(f"max_per_layer={max_per_layer!r} is invalid: expected None or a positive int")
    n_keep = num_steps if max_per_layer is None else min(max_per_layer, num_steps)
    keep = {round(i * (num_steps - 1) / max(n_keep - 1, 1)) for i in range(n_keep)}
    state = {"step": -1, "t": None}
    out: dict[Key, list[tuple[float, torch.Tensor]]] = {}

    def pre(_mod, args, kwargs):
        t = kwargs.get("timestep", args[1] if len(args) > 1 else None)
        state["step"] += 1
        state["t"] = float(t.reshape(-1)[0]) if torch.is_tensor(t) else t

    def recorder(key: Key):
        def hook(_mod, _inp, y):
            if state["step"] in keep:
                out.setdefault(key, []).append((state["t"], y.detach().float().cpu()))
        return hook

    handles = [model.register_forward_pre_hook(pre, with_kwargs=True)]
    try:
        for i, (_, m) in enumerate(self_attention_modules(model)):
            for kind in kinds:
                target = m if kind == "out" else getattr(m, f"to_{kind}")
                handles.append(target.register_forward_hook(recorder((i, kind))))
        sample(model, labels, num_steps=num_steps, seed=seed, progress=False, **sample_kw)
    finally:
        for h in handles:
            h.remove()
    return out


# ---- salience, SSC and CSB -------------------------------------------------------------------------------
def salience(x: torch.Tensor) -> torch.Tensor:
    """s(X)_j = max abs(X[..., j]) over every dim but the last: (..., C) -> (C,)."""
    return x.detach().abs().float().reshape(-1, x.shape[-1]).amax(0)


def spearman_rho(s_t: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """rho_t = Spearman's rank correlation of s_t[t] (T, C) with ref (C,) -> (T,); 0 where a ranking is flat."""
    r = ref.detach().cpu().double().numpy()
    rho = [spearmanr(row, r)[0] if row.max() > row.min() and r.max() > r.min() else 0.0
           for row in s_t.detach().cpu().double().numpy()]
    return torch.nan_to_num(torch.tensor(rho, dtype=torch.float32))


def ssc_weights(s_t: torch.Tensor, ref: torch.Tensor | None = None, sign: float = 1.0,
                temperature: float = 1.0) -> torch.Tensor:
    """SSC timestep weights eta_t = softmax_t(sign * rho_t / temperature), rho_t = spearman(s_t, ref): (T,), sum 1.

    PTQ4DiT takes ref = s(W) and sign = -1: timesteps whose activation salience is *complementary* to the
    weight's (low rho) are the ones balancing helps most. For a cache there is no weight, so the default
    ref is the pooled salience mean_t s_t and sign = +1: timesteps whose channel ranking agrees with the
    consensus get more say, and a timestep with an unusual ranking cannot pull b towards itself.
    """
    if s_t.ndim != 2:
        raise ValueError(f"s_t must be (T, C), got shape {tuple(s_t.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature={temperature!r} is invalid: expected > 0")
    ref = s_t.mean(0) if ref is None else ref  # (C,)
    return torch.softmax(sign * spearman_rho(s_t, ref) / temperature, 0)


def csb_factors(s: torch.Tensor, alpha: float) -> torch.Tensor:
    """CSB for a tensor without a weight: b_j = (s_j / geomean(s)) ** alpha, with s floored at 1e-6 max(s)."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha={alpha!r} is invalid: expected a number in [0, 1]")
    s = s.float().clamp_min(float(s.max()) * 1e-6 + 1e-12)
    return (s / s.log().mean().exp()) ** alpha  # (C,)


def fit_csb_calibration(tensors: dict[Key, list[tuple[float, torch.Tensor]]], alpha: float = 0.5, use_ssc: bool = True,
                    percentile: float = 100.0, temperature: float = 1.0) -> dict[Key, CSBCalibration]:
    """Fit b and a static scale per key over the calibration timesteps.

    s_bar = sum_t eta_t s(X_t) with SSC weights eta (uniform 1/T without SSC); b = csb_factors(s_bar, alpha);
    s = percentile over t of max|X_t / b| / 127 (100: the maximum, nothing in the calibration set clips).
    """
    if not 0.0 < percentile <= 100.0:
        raise ValueError(f"percentile={percentile!r} is invalid: expected a number in (0, 100]")
    calib = {}
    for key, items in tensors.items():
        if not items:
            raise ValueError(f"no calibration tensors for key {key!r}")
        s_t = torch.stack([salience(x) for _, x in items])  # (T, C)
        T = s_t.shape[0]
        eta = ssc_weights(s_t, temperature=temperature) if use_ssc else torch.full((T,), 1.0 / T)
        b = csb_factors((eta[:, None] * s_t).sum(0), alpha)  # (C,)
        amax_t = (s_t / b).amax(1)  # (T,) = max|X_t / b|, exactly
        scale = torch.quantile(amax_t, percentile / 100.0).clamp_min(1e-12) / QMAX
        calib[key] = CSBCalibration(b, scale, eta)
    return calib


def reconstruction_error(tensors: dict[Key, list[tuple[float, torch.Tensor]]], mode: str | dict[Key, CSBCalibration],
                         alpha: float = 0.5, dynamic: bool = False) -> dict[Key, list[dict]]:
    """Per key and timestep: rel_l2 = norm(X_hat - X) / norm(X) and max_abs = max abs(X_hat - X).

    `mode` is one of MODES ("csb" / "csb_ssc" fit b in-sample, without / with SSC) or a fitted calibration.
    CSB uses the static scale unless `dynamic` (then s = max|X / b| / 127 per tensor, as "int8_tensor" does).
    """
    calib = mode if isinstance(mode, dict) else None
    if calib is None and mode not in MODES:
        raise ValueError(f"mode={mode!r} is invalid: expected one of {MODES} or a dict of CSBCalibration")
    if mode in ("csb", "csb_ssc"):
        calib = fit_csb_calibration(tensors, alpha, use_ssc=mode == "csb_ssc")
    result = {}
    for key, items in tensors.items():
        rows = []
        for t, x in items:
            if calib is not None:
                x_hat = dequantize_calibrated(quantize_calibrated(x, calib[key], dynamic), calib[key])
            else:
                x_hat = dequantize(quantize(x, mode))
            err = x_hat.float() - x.float()
            rows.append({"t": t, "rel_l2": float(err.norm() / x.float().norm().clamp_min(1e-12)),
                         "max_abs": float(err.abs().max())})
        result[key] = rows
    return result


def error_table(tensors: dict[Key, list[tuple[float, torch.Tensor]]], modes: tuple[str, ...] = MODES,
                alpha: float = 0.5, dynamic: bool = False) -> list[dict]:
    """Flat rows (mode, layer, kind, t, rel_l2, max_abs) for every mode, ready for a DataFrame."""
    return [{"mode": m, "layer": key[0], "kind": key[1], **row}
            for m in modes for key, rows in reconstruction_error(tensors, m, alpha, dynamic).items() for row in rows]
