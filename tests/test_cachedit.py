"""cache-dit's DBCache as a peer: it skips blocks on a tiny DiT with CFG, each run starts fresh, removal is exact.

Attach, removal and bit-identity on the bare model are also tests/test_contract.py's (peer-cachedit)."""

import pytest
import torch
from test_peers import Counter

from dqar_lib import sample, tiny_dit
from dqar_lib.evaluation.cachedit import CacheDitPeer
from dqar_lib.evaluation.methods import run_method
from dqar_lib.evaluation.metrics import psnr
from dqar_lib.evaluation.peers import get_peer, peer_status
from dqar_lib.evaluation.run_sampling import bench_sampling

LABELS, STEPS = [1, 2], 8  # guidance 1.5: one CFG batch of 4 rows per step
LOOSE = dict(residual_diff_threshold=0.5, max_warmup_steps=2)  # skips on the random tiny DiT in 8 steps


def run(model, peer=None, steps=STEPS):
    kw = dict(num_steps=steps, guidance_scale=1.5, progress=False)
    return run_method(model, peer, LABELS, **kw) if peer is not None else sample(model, LABELS, **kw)


def test_registered_and_reported():
    peer = get_peer("cachedit", residual_diff_threshold=0.08)
    assert isinstance(peer, CacheDitPeer) and peer.params["residual_diff_threshold"] == 0.08
    assert peer_status()["cachedit"] == "ok"


@pytest.mark.parametrize("taylorseer_order", [None, 1])
def test_skips_blocks_and_removes_exactly(taylorseer_order):
    model = tiny_dit(depth=4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    attrs = {n: set(vars(m)) for n, m in model.named_modules()}
    with Counter(model) as full:
        ref = run(model)
    peer = get_peer("cachedit", **LOOSE, taylorseer_order=taylorseer_order)
    with Counter(model) as cut:
        res = run(model, peer)
    assert cut["model"] == full["model"] == STEPS
    skipped = len(peer.cached_steps) * (len(model.transformer_blocks) - 1)  # F1B0: blocks 1..3 skipped
    assert peer.cached_steps and full["ff"] - cut["ff"] == skipped and full["attn"] - cut["attn"] == skipped
    assert psnr(res.images, ref.images) < float("inf")
    assert set(model.state_dict()) == set(before), "cache-dit's state_dict keys were left behind"
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert {n: set(vars(m)) for n, m in model.named_modules()} == attrs
    assert torch.equal(run(model).images, ref.images), "full compute after removal differs from before"


def test_each_run_starts_fresh():
    """Applied once and sampled twice, or sampled with a shorter run in between: the same images."""
    model, peer = tiny_dit(), get_peer("cachedit", **LOOSE)
    peer.prepare(model, LABELS, num_steps=STEPS)
    peer.apply(model)
    try:
        outs = [sample(model, LABELS, num_steps=s, progress=False, step_callback=peer.step_callback).latents
                for s in (STEPS, 5, STEPS)]
    finally:
        peer.remove(model)
    assert torch.equal(outs[0], outs[2])
    assert torch.equal(run(model, peer).latents, outs[0])


def test_bench_counts_its_skipped_blocks():
    model = tiny_dit()
    rows = bench_sampling(model, LABELS, {"full": None, "cachedit": get_peer("cachedit", **LOOSE)},
                          num_steps=STEPS, repeats=1, warmup=0, progress=False)
    by = {r["method"]: r for r in rows}
    assert by["cachedit"]["reuse_fraction"] > 0 and by["cachedit"]["flops_ratio"] > 1
    assert by["cachedit"]["config"]["peer"] == "cachedit"


def test_a_threshold_of_zero_never_skips():
    model = tiny_dit()
    ref = run(model)
    peer = get_peer("cachedit", residual_diff_threshold=0.0, max_warmup_steps=0)
    assert torch.equal(run(model, peer).images, ref.images) and peer.cached_steps == []


@pytest.mark.parametrize("knob,value", [("residual_diff_threshold", -0.1), ("residual_diff_threshold", float("nan")),
                                        ("Fn_compute_blocks", 0), ("Bn_compute_blocks", -1),
                                        ("max_warmup_steps", 1.5), ("taylorseer_order", 3)])
def test_bad_knob_names_itself(knob, value):
    with pytest.raises(ValueError, match=rf"{knob} must be .*got {value!r}"):
        get_peer("cachedit", **{knob: value})


def test_refuses_what_it_cannot_run():
    model = tiny_dit(depth=2)
    with pytest.raises(ValueError, match="Fn_compute_blocks \\+ Bn_compute_blocks must be at most the model's 2"):
        run(model, get_peer("cachedit", Fn_compute_blocks=2, Bn_compute_blocks=1))
    from dqar_lib.models.zoo import tiny_pixart

    with pytest.raises(ValueError, match="needs a DiTTransformer2DModel; got PixArtTransformer2DModel"):
        get_peer("cachedit").apply(tiny_pixart())
    assert torch.equal(run(model).latents, run(model).latents)
