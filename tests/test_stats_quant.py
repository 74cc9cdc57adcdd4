import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dqar_lib.method.quant import QMAX, dequantize, quantize
from dqar_lib.method.stats import attention_entropy, latent_snr, predicted_x0, sampled_attention_entropy


def roundtrip_error(x: torch.Tensor, mode: str) -> float:
    return float((dequantize(quantize(x, mode)).float() - x.float()).abs().max())

shapes = st.tuples(st.integers(1, 4), st.integers(1, 16), st.integers(1, 24))


def test_entropy_bounds_uniform_and_one_hot():
    assert attention_entropy(torch.full((3, 8, 16), 1 / 16)).item() == 1.0 or math.isclose(
        attention_entropy(torch.full((3, 8, 16), 1 / 16)).item(), 1.0, abs_tol=1e-6)
    one_hot = torch.zeros(3, 8, 16)
    one_hot[..., 5] = 1
    assert attention_entropy(one_hot).item() < 1e-6


@settings(max_examples=50, deadline=None)
@given(shapes, st.integers(0, 2**31 - 1), st.floats(0.01, 50))
def test_entropy_lies_in_unit_interval(shape, seed, temp):
    logits = torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * temp
    h = attention_entropy(logits.softmax(-1)).item()
    assert 0.0 <= h <= 1.0


def test_sampled_entropy_matches_full_on_sampled_rows():
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 16, 8, generator=g), torch.randn(2, 16, 8, generator=g)  # 2 heads of 4
    full = (q[0].view(16, 2, 4).transpose(0, 1) @ k[0].view(16, 2, 4).transpose(0, 1).transpose(1, 2) / 2).softmax(-1)
    assert torch.allclose(sampled_attention_entropy(q, k, heads=2, n_rows=16, n_heads=2), attention_entropy(full))
    sharp = sampled_attention_entropy(q * 50, k, heads=2, n_rows=4, n_heads=1)
    assert sharp < sampled_attention_entropy(q * 0.01, k, heads=2, n_rows=4, n_heads=1)


def test_snr_falls_as_noise_rises():
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(4, 3, 8, 8, generator=g), torch.randn(4, 3, 8, 8, generator=g)
    acp = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000), 0)
    snrs = [latent_snr(x0, acp[t].sqrt() * x0 + (1 - acp[t]).sqrt() * eps).item() for t in range(0, 1000, 50)]
    assert all(a > b for a, b in zip(snrs, snrs[1:]))


def test_predicted_x0_inverts_the_forward_process():
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(2, 3, 4, 4, generator=g), torch.randn(2, 3, 4, 4, generator=g)
    a = 0.3
    assert torch.allclose(predicted_x0(a**0.5 * x0 + (1 - a) ** 0.5 * eps, eps, a), x0, atol=1e-5)


@settings(max_examples=50, deadline=None)
@given(shapes, st.integers(0, 2**31 - 1), st.floats(1e-3, 1e3))
def test_int8_roundtrip_error_bounds(shape, seed, mag):
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * mag
    amax = x.abs().max().item()
    # per-tensor: at most half a step of s = max|X| / 127
    assert roundtrip_error(x, "int8_tensor") <= 0.5 * amax / QMAX * (1 + 1e-5) + 1e-12
    # per-channel: at most half a step of that channel's own scale, never worse than per-tensor
    q = quantize(x, "int8_channel")
    assert q.scale.shape == (shape[-1],)  # one scale per channel of the last dim
    err = (dequantize(q) - x).abs().reshape(-1, shape[-1]).amax(0)
    assert torch.all(err <= 0.5 * q.scale * (1 + 1e-5) + 1e-12)
    assert roundtrip_error(x, "fp32") == 0.0
    assert roundtrip_error(x, "fp16") <= amax * 2**-10


def test_int8_channel_scales_each_channel_of_the_last_dim():
    """One scale per channel of the last dim, (C,): a few outlier channels no longer coarsen the others' grid."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 64, 32, generator=g)  # (B, N, C)
    outliers = [3, 17]
    x[..., outliers] *= 100.0
    per_channel, per_tensor = quantize(x, "int8_channel"), quantize(x, "int8_tensor")
    assert per_channel.scale.shape == (32,) and per_tensor.scale.shape == ()
    assert torch.allclose(per_channel.scale, x.abs().amax((0, 1)) / QMAX)

    def rel(q, channels=slice(None)):
        return float((dequantize(q) - x)[..., channels].norm() / x[..., channels].norm())

    assert rel(per_channel) < 0.5 * rel(per_tensor)
    normal = [c for c in range(32) if c not in outliers]
    assert rel(per_channel, normal) < 0.1 * rel(per_tensor, normal)


def test_int8_storage_is_a_quarter_of_fp32():
    x = torch.randn(4, 64, 32)
    assert quantize(x, "int8_tensor").nbytes == x.numel() + 4
    assert quantize(x, "int8_channel").nbytes == x.numel() + 4 * 32
    assert quantize(x, "fp16").nbytes == 2 * x.numel()
    assert quantize(x, "int8_channel").data.dtype == torch.int8


def test_quantize_zero_tensor_is_safe():
    assert torch.equal(dequantize(quantize(torch.zeros(3, 5), "int8_channel")), torch.zeros(3, 5))
