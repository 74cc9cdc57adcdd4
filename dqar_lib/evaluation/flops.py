"""Analytic FLOPs of one DiT / PixArt forward, and what attention reuse saves of them.

A FLOP is a multiply or an add, so a (M, K) x (K, N) matmul costs 2*M*K*N. Only matmuls and convolutions
are counted (norms, softmax, activations and the DQAR gates are left out); the counts agree exactly with
`torch.utils.flop_counter.FlopCounterMode` on the math attention path. Symbols, per sample:

    N   image tokens = (sample_size / patch_size)^2       D   width = num_attention_heads * attention_head_dim
    T   text tokens (PixArt cross-attention)               L   number of blocks
    self-attention projections  Q, K, V, out: 4 * 2*N*D^2
    self-attention core         QK^T and AV:  4*N^2*D
    MLP                         D -> 4D -> D: 2 * 2*N*D*4D
"""

from __future__ import annotations

from collections.abc import Sequence

from ..method.config import GRANULARITIES

_TIME_FREQS = 256  # diffusers' sinusoidal timestep features, projected by TimestepEmbedding (256 -> D -> D)


def _sizes(model) -> dict:
    """Sizes read from a diffusers DiT / PixArt config (a model, or its `.config`)."""
    cfg = getattr(model, "config", model)
    get = cfg.get if hasattr(cfg, "get") else lambda k, d=None: getattr(cfg, k, d)
    heads, head_dim, size, p, c_in, L = (get(k) for k in ("num_attention_heads", "attention_head_dim", "sample_size",
                                                          "patch_size", "in_channels", "num_layers"))
    if None in (heads, head_dim, size, p, c_in, L):
        raise ValueError(f"{type(model).__name__} is not a DiT/PixArt-style transformer: its config lacks "
                         "num_attention_heads, attention_head_dim, sample_size, patch_size, in_channels or num_layers")
    pixart = get("caption_channels") is not None or get("norm_type") == "ada_norm_single"
    return dict(D=heads * head_dim, N=(size // p) ** 2, L=L, p=p, c_in=c_in, c_out=get("out_channels") or c_in,
                pixart=pixart, c_cross=get("cross_attention_dim"), c_cap=get("caption_channels"))


def _check_batch(batch) -> None:
    if not isinstance(batch, int) or batch <= 0:
        raise ValueError(f"batch must be a positive integer, got {batch!r}")


def forward_flops(model, batch: int, text_tokens: int | None = None) -> dict:
    """FLOPs of one forward at batch size `batch` (CFG doubles it), split into parts.

    `model` is a diffusers DiTTransformer2DModel / PixArtTransformer2DModel or its config (a dict works, so
    a real architecture can be counted without building it).
    Keys: the per-block parts summed over the L blocks (attn_qkv, attn_out, attn_core, cross_attn, mlp, adaln),
    `embed` (patch embedding, timestep embedding and caption projection), `final` (output layer), `total`,
    and `per_block`, one block's parts. PixArt needs `text_tokens`, the caption length T.
    """
    _check_batch(batch)
    s = _sizes(model)
    B, N, D, L, p = batch, s["N"], s["D"], s["L"], s["p"]
    t_emb = 2 * _TIME_FREQS * D + 2 * D * D  # TimestepEmbedding per sample
    block = dict(
        attn_qkv=3 * 2 * B * N * D * D,  # (B, N, D) -> Q, K, V (B, N, D)
        attn_out=2 * B * N * D * D,
        attn_core=4 * B * N * N * D,  # QK^T (B, H, N, N) and AV (B, H, N, D/H)
        cross_attn=0,
        mlp=2 * 2 * B * N * D * 4 * D,  # (B, N, D) -> (B, N, 4D) -> (B, N, D)
        adaln=0,
    )
    embed = 2 * B * N * (s["c_in"] * p * p) * D  # patch embed: conv p x p, stride p -> (B, N, D)
    if s["pixart"]:
        if not isinstance(text_tokens, int) or text_tokens <= 0:
            raise ValueError(f"text_tokens must be a positive integer for a PixArt-style model, got {text_tokens!r}")
        T, c_cross = text_tokens, s["c_cross"] or D
        block["cross_attn"] = (2 * 2 * B * N * D * D  # Q from image tokens, out projection
                               + 2 * 2 * B * T * c_cross * D  # K, V from the caption (B, T, D)
                               + 4 * B * N * T * D)  # QK^T (B, H, N, T) and AV
        embed += B * (t_emb + 2 * D * 6 * D)  # adaLN-single: one (B, 6D) modulation shared by all blocks
        embed += 2 * B * T * (s["c_cap"] or D) * D + 2 * B * T * D * D  # caption projection (B, T, D)
        final = 2 * B * N * D * p * p * s["c_out"]
    else:
        block["adaln"] = B * (t_emb + 2 * D * 6 * D)  # adaLN-Zero: each block embeds t, y and maps D -> 6D
        final = B * (t_emb + 2 * D * 2 * D) + 2 * B * N * D * p * p * s["c_out"]  # shift/scale, then unpatchify
    out = {k: L * v for k, v in block.items()}
    out.update(embed=embed, final=final, per_block=block)
    out["total"] = embed + final + L * sum(block.values())
    return out


def _fractions(reuse_fraction, L: int, name: str) -> list[float]:
    r = [float(reuse_fraction)] * L if isinstance(reuse_fraction, (int, float)) else [float(v) for v in reuse_fraction]
    if len(r) != L:
        raise ValueError(f"{name} has {len(r)} entries but the model has {L} blocks")
    if any(not (0.0 <= v <= 1.0) for v in r):
        raise ValueError(f"{name} must lie in [0, 1], got {reuse_fraction!r}")
    return r


def dqar_flops(model, batch: int, reuse_fraction: float | Sequence[float] = 0.0, granularity: str = "attn",
               text_tokens: int | None = None, cfg_shared: float = 0.0) -> float:
    """Mean FLOPs of one forward when each block reuses a fraction of its steps.

    `reuse_fraction` is one number for every block or one per block (the controller's per-layer reuse counts
    over its total). "attn" reuse skips a block's self-attention projections and core; "kv" skips only its K and
    V projections; "block" skips the whole block (self-attention, cross-attention, MLP, adaLN), and so does
    "stack" for every block at once.
    `cfg_shared` is the fraction of (step, block) calls that computed self-attention on the
    conditional half of the batch only (CFG sharing), saving half of that attention.
    """
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
    if not (0.0 <= cfg_shared <= 1.0):
        raise ValueError(f"cfg_shared must lie in [0, 1], got {cfg_shared!r}")
    full = forward_flops(model, batch, text_tokens)
    b = full["per_block"]
    attn = b["attn_qkv"] + b["attn_out"] + b["attn_core"]
    saved_per_reuse = {"attn": attn, "kv": b["attn_qkv"] * 2 / 3,  # K and V of Q, K, V
                       "block": attn + b["cross_attn"] + b["mlp"] + b["adaln"]}
    saved_per_reuse = saved_per_reuse["block" if granularity == "stack" else granularity]  # "stack": every block
    r = _fractions(reuse_fraction, _sizes(model)["L"], "reuse_fraction")
    return full["total"] - sum(r) * saved_per_reuse - cfg_shared * len(r) * attn / 2


def attention_ceiling(model, batch: int, text_tokens: int | None = None) -> float:
    """Analytic ceiling of attention reuse: full FLOPs / FLOPs with every self-attention output reused."""
    full = forward_flops(model, batch, text_tokens)["total"]
    reused = dqar_flops(model, batch, 1.0, "attn", text_tokens)
    return full / reused  # > 0: the MLPs always run
