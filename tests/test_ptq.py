import pytest
import torch
from conftest import dit_inputs, run_steps

from dqar_lib import tiny_dit
from dqar_lib.evaluation.ptq import (
    apply_w8a8,
    block_linears,
    collect_activation_salience,
    csb_balance,
    fake_quant_weight,
    remove_w8a8,
    sampling_run,
)
from dqar_lib.fitting.cache_fit import ssc_weights

# Measured on tiny_dit (5 timesteps, max over them): W8A8 moves the output by 0.6% (0.7% with CSB+SSC).
# INT8 rounding costs about crest / (127 sqrt 12) ~ 0.2-1% per quantized tensor; 5% leaves room for the
# 27 quantized linears to compound while still catching a broken scale (a wrong axis gives tens of %).
W8A8_BOUND = 0.05


def max_rel(out, ref):
    return max(float((a - b).norm() / b.norm()) for a, b in zip(out, ref))


def plant_outlier(model, j=5, factor=100.0):
    """Make input channel j of every to_q/k/v `factor` times larger (adaLN scale) and its weight column
    `factor` times smaller: the full-precision function barely changes, per-tensor INT8 of X suffers."""
    for blk in model.transformer_blocks:
        D = blk.norm1.linear.in_features
        with torch.no_grad():
            blk.norm1.linear.weight[D + j] = 0  # scale_msa_j = bias: 1 + scale_msa_j = factor
            blk.norm1.linear.bias[D + j] = factor - 1
            for proj in (blk.attn1.to_q, blk.attn1.to_k, blk.attn1.to_v):
                proj.weight[:, j] /= factor
    return model


@pytest.fixture(scope="module")
def calib_run():
    return sampling_run(labels=(0, 1, 2, 3), num_steps=4)


def test_w8a8_changes_outputs_slightly(dit, calib_run):
    """The error W8A8 costs; attach, removal and bit-identity are tests/test_contract.py's (W8A8Peer)."""
    ref = run_steps(dit, dit_inputs)
    handle = apply_w8a8(dit, calib_run)
    assert len(handle.layers) == len(block_linears(dit)) == 27  # 9 per block
    err = max_rel(run_steps(dit, dit_inputs), ref)
    assert 1e-4 < err < W8A8_BOUND
    assert remove_w8a8(dit) is handle and remove_w8a8(dit) is None


@pytest.mark.parametrize("use_ssc", [False, True])
def test_csb_reduces_error_with_a_planted_outlier_channel(calib_run, use_ssc):
    model = plant_outlier(tiny_dit())
    ref = run_steps(model, dit_inputs)
    sal = collect_activation_salience(model, calib_run)
    s_q = sal["transformer_blocks.0.attn1.to_q"].amax(0)  # (C_in,)
    assert s_q.argmax() == 5 and s_q[5] > 20 * s_q.median()  # the outlier is there
    errs = {}
    for use_csb in (False, True):
        handle = apply_w8a8(model, sal, use_csb=use_csb, use_ssc=use_ssc)
        errs[use_csb] = max_rel(run_steps(model, dit_inputs), ref)
        handle.remove()
    s_X_t = sal["transformer_blocks.0.attn1.to_q"]  # (T, C_in)
    s_W = model.transformer_blocks[0].attn1.to_q.weight.abs().amax(0)  # (C_in,)
    eta = ssc_weights(s_X_t, s_W, sign=-1.0) if use_ssc else None  # PTQ4DiT: softmax(-rho)
    s_X = (eta[:, None] * s_X_t).sum(0) if use_ssc else s_X_t.amax(0)
    assert torch.allclose(handle.layers["transformer_blocks.0.attn1.to_q"].b, csb_balance(s_X, s_W))
    assert errs[True] < 0.5 * errs[False]
    assert errs[True] < W8A8_BOUND
    assert csb_balance(s_X, s_W).argmax() == 5  # the outlier channel is divided most


def test_salience_collection_and_weight_quantization():
    model = tiny_dit()
    sal = collect_activation_salience(model, sampling_run(labels=(0,), num_steps=2))
    assert sal["transformer_blocks.1.ff.net.2"].shape == (2, 128)  # one row per step, C_in = 4 * 32
    W = model.transformer_blocks[0].ff.net[0].proj.weight  # (128, 32)
    W_q = fake_quant_weight(W)
    step = W.abs().amax(1, keepdim=True) / 127  # per output channel
    assert torch.all((W_q - W).abs() <= step / 2 + 1e-7)
    assert len(torch.unique(torch.round(W_q[0] / step[0]))) > 10


def test_bad_arguments_are_named():
    model = tiny_dit()
    with pytest.raises(ValueError, match="alpha"):
        csb_balance(torch.ones(3), torch.ones(3), alpha=2.0)
    with pytest.raises(ValueError, match="b_clip"):
        csb_balance(torch.ones(3), torch.ones(3), b_clip=(1.0, 0.5))
    with pytest.raises(ValueError, match="calib has no activation salience"):
        apply_w8a8(model, {})
    with pytest.raises(TypeError, match="calib"):
        apply_w8a8(model, [1, 2])
    assert not hasattr(model, "_dqar_w8a8")
