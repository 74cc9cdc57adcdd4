"""DQAR on every diffusers image-transformer family with a tiny config (dqar_lib.models.tiny_families).

Per family: "off" and removal are bit-identical, "always" reuses at every granularity that applies. For the joint
(MMDiT) families, what is reused for the text tokens is checked per granularity; the signals (H_t, SNR_t per
prediction type, t on the scheduler's scale) and the pipelines (`dqar_lib.dqar(pipe)`) too.
"""

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from diffusers.models.attention import AttentionModuleMixin

import dqar_lib as dq
from dqar_lib import DQARConfig, apply_dqar, remove_dqar
from dqar_lib.evaluation.portability import check_family, image_transformer_classes, portability_rows
from dqar_lib.method.families import Streams, cfg_layout, self_attention_modules, timestep_scale
from dqar_lib.method.prediction import clean_estimate, prediction_type, step_sigma, step_x0
from dqar_lib.method.stats import latent_snr
from dqar_lib.models.sampling import make_scheduler
from dqar_lib.models.tiny_families import FAMILIES
from dqar_lib.models.tiny_pipelines import tiny_pipeline

JOINT = ["SD3Transformer2DModel", "FluxTransformer2DModel"]


def _steps(name, n=3):
    spec = FAMILIES[name]
    sched = spec.scheduler()
    sched.set_timesteps(n)
    return spec, sched, [float(t) for t in sched.timesteps]


def _run(model, spec, ts):
    with torch.no_grad():
        return [model(**spec.inputs(t)).sample for t in ts]


REFUSED = {"OmniGenTransformer2DModel": "its 2 attention modules are declared cross-attention"}
NO_KV = {"PRXTransformer2DModel", "Flux2Transformer2DModel"}  # fused QKV projections (Flux2: its single blocks)
NO_QK = {"PRXTransformer2DModel"}  # fused QKV everywhere: no Q/K to read H_t from


@pytest.mark.parametrize("name", sorted(set(FAMILIES) - set(REFUSED)))
def test_family_contract(name):
    """Attaches; "off" and removal bit-identical; "always" reuses at attn, kv and block; H_t and SNR_t measured."""
    row = check_family(name, FAMILIES[name])
    assert row["attaches"] is True, row["note"]
    assert row["off_identical"] is True
    assert row["removal_identical"] is True
    assert row["always_reuse"] > 0
    assert ({"attn", "block"} if name in NO_KV else {"attn", "kv", "block"}) <= set(row["granularities"].split(", "))
    assert ("granularity='kv'" in row["note"]) is (name in NO_KV)
    assert ("H_t: not measured" in row["note"]) is (name in NO_QK)
    assert row["forecast"] == "on"
    assert row["t_on_schedule"] is True  # progress, warmup and the schedule read the scheduler's t
    assert name in NO_QK or isinstance(row["H_t"], float) and 0 < row["H_t"] <= 1
    assert isinstance(row["SNR_t"], float) and row["SNR_t"] > 0


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_family_refused_says_why(name):
    row = check_family(name, FAMILIES[name])
    assert row["attaches"] is False and REFUSED[name] in row["note"] and name in row["note"]


def test_off_identical_catches_a_change():
    """The identity check can fail: a model whose attention output is nudged is not "off"-identical."""
    spec, sched, ts = _steps("FluxTransformer2DModel")
    model = spec.make()
    base = _run(model, spec, ts)
    attn = model.transformer_blocks[0].attn
    h = attn.register_forward_hook(lambda m, a, out: (out[0] + 1e-3, out[1]))
    assert not all(torch.equal(a, b) for a, b in zip(base, _run(model, spec, ts)))
    h.remove()


def test_self_attention_found_by_structure():
    """Joint attention (SD3's Attention with added K/V), Flux's AttentionModuleMixin class, no cross-attention."""
    sd3, flux, pixart = (FAMILIES[n].make() for n in ("SD3Transformer2DModel", "FluxTransformer2DModel",
                                                        "PixArtTransformer2DModel"))
    assert [n for n, _ in self_attention_modules(sd3)] == ["transformer_blocks.0.attn", "transformer_blocks.0.attn2",
                                                           "transformer_blocks.1.attn"]
    names = [n for n, m in self_attention_modules(flux)]
    assert names == ["transformer_blocks.0.attn", "transformer_blocks.1.attn", "single_transformer_blocks.0.attn",
                     "single_transformer_blocks.1.attn"]
    assert all(isinstance(m, AttentionModuleMixin) for _, m in self_attention_modules(flux))
    assert all(not n.endswith("attn2") for n, _ in self_attention_modules(pixart))  # PixArt's attn2 is cross
    ctl = apply_dqar(sd3, "always")  # "attn": both self-attentions of SD3.5's dual block; "block": one layer a block
    assert ctl.num_layers == 3
    remove_dqar(sd3)
    assert apply_dqar(sd3, DQARConfig.preset("always", granularity="block")).num_layers == 2
    remove_dqar(sd3)


def test_streams_read_the_blocks_return_order():
    sd3, flux = FAMILIES["SD3Transformer2DModel"].make(), FAMILIES["FluxTransformer2DModel"].make()
    text_first = ("encoder_hidden_states", "hidden_states")
    assert Streams(sd3.transformer_blocks[0]).order == text_first
    assert Streams(flux.transformer_blocks[0]).order == text_first
    assert Streams(flux.single_transformer_blocks[0]).order == text_first
    assert not Streams(FAMILIES["DiTTransformer2DModel"].make().transformer_blocks[0]).joint


@pytest.mark.parametrize("name, order", [("FluxTransformer2DModel", "text_first"),
                                         ("HunyuanImageTransformer2DModel", "image_first")])
@pytest.mark.parametrize("granularity", ["attn", "block"])
def test_entropy_of_a_joining_single_stream_block_reads_the_image_tokens(name, order, granularity, monkeypatch):
    """A single-stream block that joins text and image tokens itself: H_t comes from the image tokens' rows of the
    joined Q/K (the same values as the block's own projection of those rows), as joint attention's does."""
    import dqar_lib.method.hooks as hooks
    from dqar_lib.method.families import block_of, joined_order

    spec, _, ts = _steps(name, 2)
    model = spec.make()
    singles = {i for i, (n, _) in enumerate(self_attention_modules(model)) if joined_order(block_of(model, n))}
    assert singles and {joined_order(block_of(model, n)) for n, _ in self_attention_modules(model)} - {None} == {
        ("encoder_hidden_states", "hidden_states") if order == "text_first" else ("hidden_states",
                                                                                 "encoder_hidden_states")}
    seen, joined, current = {}, {}, []
    real_entropy, real_h = hooks._entropy, hooks.sampled_attention_entropy

    def entropy(ctl, layer):  # which layer hands H_t over now
        current[:] = [layer.index]
        real_entropy(ctl, layer)

    def h(q, k, *a):  # the Q that H_t is measured from, per layer
        seen[current[0]] = q
        return real_h(q, k, *a)

    monkeypatch.setattr(hooks, "_entropy", entropy)
    monkeypatch.setattr(hooks, "sampled_attention_entropy", h)
    for i in singles:  # the joined (B, M + N, D) Q of each single-stream layer, as its to_q projected it
        m = self_attention_modules(model)[i][1]
        m.to_q.register_forward_hook(lambda _m, _i, out, i=i: joined.setdefault(i, out))
    inputs = spec.inputs(ts[0])
    apply_dqar(model, DQARConfig(granularity=granularity, collect_stats=True))
    try:
        with torch.no_grad():
            model(**inputs)
    finally:
        remove_dqar(model)
    M = inputs["encoder_hidden_states"].shape[1]
    for i in singles:
        T = joined[i].shape[1]
        rows = slice(M, T) if order == "text_first" else slice(0, T - M)
        assert seen[i].shape[1] == T - M and torch.equal(seen[i], joined[i][:, rows])
    if name == "FluxTransformer2DModel":  # its dual-stream blocks' joint attention: the image tokens too
        assert set(seen) - singles and all(seen[i].shape[1] == T - M for i in set(seen) - singles)


class _Record:
    """Forward hooks recording each call's (hidden_states, encoder_hidden_states) and output."""

    def __init__(self, module):
        self.calls = []
        self.h = module.register_forward_hook(self.hook, with_kwargs=True)

    def hook(self, _m, args, kwargs, out):
        hs = kwargs.get("hidden_states", args[0] if args else None)
        self.calls.append((hs, kwargs.get("encoder_hidden_states"), out))


@pytest.mark.parametrize("name", JOINT)
def test_block_reuse_serves_the_text_stream_residual(name):
    """"block": a reused joint block returns both streams advanced by the residuals they had at its last compute."""
    spec, sched, ts = _steps(name)
    model = spec.make()
    block = model.transformer_blocks[0]
    rec = _Record(block)
    ctl = apply_dqar(model, DQARConfig.preset("always", granularity="block"), scheduler=sched)
    _run(model, spec, ts[:2])
    remove_dqar(model)
    assert [r["reuse"] for r in ctl.trace() if r["layer"] == 0] == [False, True]
    (hs0, txt0, (txt_out0, hs_out0)), (hs1, txt1, (txt_out1, hs_out1)) = rec.calls
    assert not torch.equal(txt_out0, txt0)  # the block changes the text stream ...
    torch.testing.assert_close(txt_out1 - txt1, txt_out0 - txt0)  # ... and a reuse serves that change
    torch.testing.assert_close(hs_out1 - hs1, hs_out0 - hs0)


def test_stack_reuse_serves_both_streams_of_the_whole_stack():
    """"stack" on Flux (dual- then single-stream blocks): a reused step's last block returns the first block's input
    streams advanced by the whole stack's residual of its last compute, text and image alike."""
    spec, sched, ts = _steps("FluxTransformer2DModel")
    model = spec.make()
    first, last = _Record(model.transformer_blocks[0]), _Record(model.single_transformer_blocks[-1])
    ctl = apply_dqar(model, DQARConfig.preset("always", granularity="stack"), scheduler=sched)
    _run(model, spec, ts[:2])
    remove_dqar(model)
    assert [r["reuse"] for r in ctl.trace() if r["layer"] == 0] == [False, True]
    (hs0, txt0, _), (hs1, txt1, _) = first.calls
    (_, _, (txt_out0, hs_out0)), (_, _, (txt_out1, hs_out1)) = last.calls
    torch.testing.assert_close(hs_out1 - hs1, hs_out0 - hs0)
    torch.testing.assert_close(txt_out1 - txt1, txt_out0 - txt0)
    assert not torch.equal(txt_out0, txt0)


def test_block_reuse_keeps_a_text_free_block_text_free():
    """SD3's last block returns no text stream (context_pre_only); served from the cache it returns none either."""
    spec, sched, ts = _steps("SD3Transformer2DModel")
    model = spec.make()
    rec = _Record(model.transformer_blocks[-1])
    apply_dqar(model, DQARConfig.preset("always", granularity="block"), scheduler=sched)
    _run(model, spec, ts[:2])
    remove_dqar(model)
    assert [out[0] for _, _, out in rec.calls] == [None, None]


@pytest.mark.parametrize("name", JOINT)
def test_attn_reuse_serves_the_text_output(name):
    """"attn": joint attention's text output is cached and served with its image output, as a tuple."""
    spec, sched, ts = _steps(name)
    model = spec.make()
    rec = _Record(model.transformer_blocks[0].attn)
    apply_dqar(model, "always", scheduler=sched)
    _run(model, spec, ts[:2])
    remove_dqar(model)
    (_, _, out0), (_, _, out1) = rec.calls
    assert isinstance(out1, tuple) and len(out1) == 2
    torch.testing.assert_close(out1[0], out0[0])  # image tokens' attention output
    torch.testing.assert_close(out1[1], out0[1])  # text tokens' attention output


@pytest.mark.parametrize("name", JOINT)
def test_kv_reuse_recomputes_the_text_kv(name):
    """"kv": the image tokens' K/V (to_k, to_v) are served; the text tokens' (add_k_proj, add_v_proj) recomputed."""
    spec, sched, ts = _steps(name)
    model = spec.make()
    attn = model.transformer_blocks[0].attn
    seen = {"to_k": [], "add_k_proj": []}  # (input, output) per call
    hooks = [getattr(attn, p).register_forward_hook(lambda _m, a, o, p=p: seen[p].append((a[0], o))) for p in seen]
    ctl = apply_dqar(model, DQARConfig.preset("always", granularity="kv"), scheduler=sched)
    _run(model, spec, ts[:2])
    remove_dqar(model)
    for h in hooks:
        h.remove()
    assert ctl.stats()["per_layer_reuse"][0] == 1
    for proj, served in (("to_k", True), ("add_k_proj", False)):
        (x0, y0), (x1, y1) = seen[proj]
        assert not torch.equal(x0, x1)  # the step changed the projection's input (the timestep modulates it)
        assert torch.equal(y0, y1) is served, proj


def test_granularity_refused_in_one_sentence_naming_the_family():
    class FusedAttention(torch.nn.Module, AttentionModuleMixin):  # Q, K and V from one projection
        def __init__(self):
            super().__init__()
            self.heads, self.to_q, self.to_qkv = 2, torch.nn.Linear(8, 8), torch.nn.Linear(8, 24)

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = FusedAttention()

    class TinyFused(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = torch.nn.ModuleList([Block()])

    with pytest.raises(ValueError, match=r"^granularity='kv' .* TinyFused's blocks\.0\.attn has none \(fused QKV\)$"):
        apply_dqar(TinyFused(), DQARConfig.preset("always", granularity="kv"))


def test_stack_refused_across_stacks_of_different_sequences():
    model = FAMILIES["Lumina2Transformer2DModel"].make()
    with pytest.raises(ValueError, match=r"Lumina2Transformer2DModel's blocks lie in 3 stacks"):
        apply_dqar(model, DQARConfig.preset("always", granularity="stack"))
    with pytest.raises(ValueError, match=r"3 stacks .*; granularity='block' forecasts each block on the same plan"):
        apply_dqar(model)  # the default preset reuses the stack: the refusal names the way out
    ctl = apply_dqar(model, DQARConfig.preset("dqar", granularity="block"))
    assert ctl.config.serve == DQARConfig.preset("dqar").serve and ctl.config.granularity == "block"


# ---- signals ------------------------------------------------------------------------------------------------------
def _x0_noise():
    g = torch.Generator().manual_seed(3)
    return torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction", "sample"])
def test_x0_per_ddpm_prediction_type(kind):
    x0, noise = _x0_noise()
    sched = make_scheduler("ddim")
    sched.register_to_config(prediction_type=kind)
    t = 600
    a = float(sched.alphas_cumprod[t])
    x_t = a**0.5 * x0 + (1 - a) ** 0.5 * noise
    out = {"epsilon": noise, "v_prediction": a**0.5 * noise - (1 - a) ** 0.5 * x0, "sample": x0}[kind]
    assert prediction_type(sched) == kind
    torch.testing.assert_close(step_x0(sched, x_t, out, t, step=0), x0, atol=1e-5, rtol=1e-5)


def test_x0_for_flow_matching():
    """Rectified flow: x_t = (1 - sigma) x0 + sigma noise, the model predicts v = noise - x0, x0 = x_t - sigma v."""
    x0, noise = _x0_noise()
    sched = FlowMatchEulerDiscreteScheduler()
    sched.set_timesteps(4)
    assert prediction_type(sched) == "flow"
    for step, t in enumerate(sched.timesteps):
        sigma = float(sched.sigmas[step])
        assert step_sigma(sched, step, float(t)) == sigma
        x_t = (1 - sigma) * x0 + sigma * noise
        torch.testing.assert_close(step_x0(sched, x_t, noise - x0, float(t), step), x0, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="unknown prediction type 'flux'"):
        clean_estimate("flux", x0, x0)


def test_flow_model_snr_and_timestep_on_the_schedulers_scale():
    """On Flux (t / 1000 in, sigma from the scheduler) SNR_t is the flow x0's, and t and progress are on 0..1000."""
    spec, sched, ts = _steps("FluxTransformer2DModel", n=4)
    model = spec.make()
    assert timestep_scale(model) == 1000 and timestep_scale(FAMILIES["DiTTransformer2DModel"].make()) == 1
    ctl = apply_dqar(model, "gates", scheduler=sched)
    with torch.no_grad():
        for t in ts[:2]:  # the second step, at sigma = sigmas[1] < 1
            inputs = spec.inputs(t)
            v = model(**inputs).sample
    remove_dqar(model)
    assert ctl.t == pytest.approx(ts[1]) and ctl.s == pytest.approx(1 - ts[1] / 1000) and ts[1] > 1
    x_t = inputs["hidden_states"]
    sigma = float(sched.sigmas[1])
    assert 0 < sigma < 1
    assert ctl.snr.get() == pytest.approx(float(latent_snr(x_t - sigma * v, x_t)), rel=1e-5)


def test_stepping_flow_scheduler_gives_t_whatever_the_family_passes():
    """Lumina2's pipeline passes 1 - t / 1000 (rising): DQAR reads t off the stepping scheduler instead."""
    spec, sched, ts = _steps("Lumina2Transformer2DModel", n=4)
    model = spec.make()
    ctl = apply_dqar(model, DQARConfig.preset("always", granularity="block"), scheduler=sched)
    seen = []
    x = spec.inputs(ts[0])["hidden_states"]
    with torch.no_grad():
        for t in sched.timesteps:
            inputs = dict(spec.inputs(float(t)), timestep=torch.full((2,), 1 - float(t) / 1000))
            v = model(**inputs).sample
            seen.append(ctl.t)
            x = sched.step(v, t, x).prev_sample
    remove_dqar(model)
    assert seen == pytest.approx(ts) and ctl.stats()["reuse_fraction"] > 0  # one run: no reset at a rising input


# ---- pipelines ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["StableDiffusion3Pipeline", "FluxPipeline"])
def test_dqar_on_a_pipeline(name):
    """`dq.dqar(pipe)` on a tiny SD3 / Flux pipeline: "off" identical, "always" reuses and changes the sample,
    the pipeline's CFG layout is taken, removal leaves the pipeline as it was."""
    pipe, kwargs = tiny_pipeline(name)

    def call():
        return pipe(**kwargs, num_inference_steps=4, generator=torch.Generator().manual_seed(0)).images

    base = call()
    with dq.dqar(pipe, "off"):
        assert torch.equal(call(), base)
    with dq.dqar(pipe, "always") as ctl:
        reused = call()
    assert ctl.stats()["reuse_fraction"] > 0 and not torch.equal(reused, base)
    assert ctl.config.cfg_layout == ("cond_second" if name == "StableDiffusion3Pipeline" else "cond_first")
    assert torch.equal(call(), base)


def test_pipeline_cli_conditioning_refuses_a_joint_pipeline_and_says_what_works():
    from dqar_lib.models.pipelines import conditions_for

    pipe, _ = tiny_pipeline("FluxPipeline")
    with pytest.raises(ValueError, match=r"FluxPipeline's FluxTransformer2DModel is neither .* dqar_lib\.dqar\(pipe\)"):
        conditions_for(pipe, 2, prompts=["a red fox"])


def test_cfg_layout_read_off_the_pipeline():
    import diffusers

    layouts = {n: cfg_layout(getattr(diffusers, n).__new__(getattr(diffusers, n)))
               for n in ("DiTPipeline", "PixArtSigmaPipeline", "StableDiffusion3Pipeline", "FluxPipeline")}
    assert layouts == {"DiTPipeline": "cond_first", "PixArtSigmaPipeline": "cond_second",
                       "StableDiffusion3Pipeline": "cond_second", "FluxPipeline": None}


# ---- the table ----------------------------------------------------------------------------------------------------
def test_table_lists_every_image_transformer_and_says_why_for_the_rest():
    names = image_transformer_classes()
    assert {"DiTTransformer2DModel", "SD3Transformer2DModel", "FluxTransformer2DModel"} <= set(names)
    assert set(FAMILIES) <= set(names)
    rows = portability_rows(families=[n for n in names if n not in FAMILIES])
    assert all(r["attaches"] == "not checked" and r["note"] for r in rows)
