import pytest
import torch
from conftest import dit_inputs, pixart_inputs, run_steps

from dqar_lib import DQARConfig, apply_dqar, get_controller, remove_dqar, tiny_dit
from dqar_lib.method.hooks import self_attention_modules

MODELS = [("dit", dit_inputs), ("pixart", pixart_inputs)]


@pytest.fixture(params=MODELS, ids=[m[0] for m in MODELS])
def model_and_inputs(request, dit, pixart):
    return (dit if request.param[0] == "dit" else pixart), request.param[1]


def test_always_reuses_and_changes_output(model_and_inputs):
    model, inputs = model_and_inputs
    ref = run_steps(model, inputs)
    ctl = apply_dqar(model, "always")
    out = run_steps(model, inputs)
    s = ctl.stats()
    n_layers = len(self_attention_modules(model))
    assert s["per_layer_reuse"] == [4] * n_layers  # 5 steps: the first computes, the other four reuse
    assert s["reuse_fraction"] == pytest.approx(0.8)
    assert torch.equal(ref[0], out[0]) and not torch.equal(ref[-1], out[-1])


def test_only_self_attention_is_wrapped(pixart):
    names = [n for n, _ in self_attention_modules(pixart)]
    assert names and all(n.endswith("attn1") for n in names)


def test_trace_has_one_row_per_step_and_layer(model_and_inputs):
    model, inputs = model_and_inputs
    ctl = apply_dqar(model, "gates")
    run_steps(model, inputs)
    rows = ctl.trace()
    L = len(self_attention_modules(model))
    assert len(rows) == 5 * L
    assert sorted((r["step"], r["layer"]) for r in rows) == [(s, i) for s in range(5) for i in range(L)]
    assert [r["t"] for r in rows[::L]] == [900.0, 700.0, 500.0, 300.0, 100.0]
    assert rows[-1]["H_t"] is not None and 0.0 <= rows[-1]["H_t"] <= 1.0 and rows[-1]["SNR_t"] > 0


def test_new_run_resets_state(dit):
    ctl = apply_dqar(dit, "always")
    run_steps(dit, dit_inputs)
    run_steps(dit, dit_inputs)  # t rises again: a new run, first step recomputes
    assert ctl.stats()["steps"] == 5 and ctl.trace()[0]["reason"] == "missing"


def test_remove_twice_is_a_noop(dit):
    assert remove_dqar(dit) is None
    ctl = apply_dqar(dit, "dqar")
    assert remove_dqar(dit) is ctl and remove_dqar(dit) is None and get_controller(dit) is None


@pytest.mark.parametrize("before", [True, False])
def test_compile_restores_dynamos_hook_guard_flag(dit, before):
    """apply_dqar(compile=True) turns skip_nnmodule_hook_guards off while attached; removal puts back what was."""
    flags = torch._dynamo.config
    saved = flags.skip_nnmodule_hook_guards
    try:
        flags.skip_nnmodule_hook_guards = before
        apply_dqar(dit, "gates", compile=True, compile_options={"backend": "eager"})
        assert flags.skip_nnmodule_hook_guards is False
        remove_dqar(dit)
        assert flags.skip_nnmodule_hook_guards is before
        apply_dqar(dit, "gates")  # without compile the flag is left alone
        flags.skip_nnmodule_hook_guards = before
        remove_dqar(dit)
        assert flags.skip_nnmodule_hook_guards is before
    finally:
        flags.skip_nnmodule_hook_guards = saved


def test_failing_attach_is_undone():
    """A layer that cannot attach (block granularity, no parent block) undoes the layers attached before it."""
    from diffusers.models.attention_processor import Attention

    class Wrapper(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = Attention(query_dim=8, heads=2, dim_head=4)

        def forward(self, hidden_states):
            return self.attn(hidden_states)

    model = torch.nn.Module()
    model.blocks = torch.nn.ModuleList([Wrapper()])  # attaches: a block around its attention
    model.attn = Attention(query_dim=8, heads=2, dim_head=4)  # fails: no parent block
    flags = torch._dynamo.config
    saved = flags.skip_nnmodule_hook_guards
    with pytest.raises(ValueError, match="granularity='block' needs each self-attention inside a transformer block"):
        apply_dqar(model, DQARConfig.preset("always", granularity="block"), compile=True,
                   compile_options={"backend": "eager"})
    assert get_controller(model) is None and flags.skip_nnmodule_hook_guards is saved
    assert not any("forward" in vars(m) or m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_model_without_attention_is_an_error():
    with pytest.raises(ValueError, match="no diffusers self-attention"):
        apply_dqar(torch.nn.Sequential(torch.nn.Linear(2, 2)), "dqar")


def test_bad_config_type():
    with pytest.raises(TypeError, match="config must be"):
        apply_dqar(tiny_dit(), 3)


def test_kv_granularity_reuses_k_and_v(dit):
    ref = run_steps(dit, dit_inputs)
    ctl = apply_dqar(dit, DQARConfig.preset("always", granularity="kv"))
    out = run_steps(dit, dit_inputs)
    assert ctl.stats()["reuse_fraction"] == pytest.approx(0.8)
    assert {k for (_, k) in ctl.cache._entries} == {"k", "v"}
    assert not torch.equal(ref[-1], out[-1])


def test_batch_change_invalidates_and_recomputes(dit):
    ctl = apply_dqar(dit, "always")
    with torch.no_grad():
        dit(**dit_inputs(batch=4, t=900))
        out = dit(**dit_inputs(batch=2, t=800))
    remove_dqar(dit)
    with torch.no_grad():
        ref = dit(**dit_inputs(batch=2, t=800))
    assert ctl.stats()["invalidated"] == 3 and ctl.stats()["reuse_fraction"] == 0.0
    assert torch.equal(out.sample, ref.sample)


def test_nan_in_cache_is_recomputed_and_counted(dit):
    ctl = apply_dqar(dit, "always")
    with torch.no_grad():
        dit(**dit_inputs(t=900))
        entry = ctl.cache._entries[(0, "out")][-1]
        entry.q.data[0, 0, 0] = float("nan")
        entry.finite = type(entry.finite)(torch.isfinite(entry.q.data).all())
        out = dit(**dit_inputs(t=800)).sample
    assert ctl.stats()["nonfinite"] == 1 and ctl.trace()[3]["reason"] == "nonfinite"
    assert torch.isfinite(out).all()


def test_budget_zero_never_reuses(dit):
    ref = run_steps(dit, dit_inputs)
    ctl = apply_dqar(dit, DQARConfig.preset("always", cache_budget_bytes=0))
    out = run_steps(dit, dit_inputs)
    assert ctl.stats()["refused"] == 15 and ctl.stats()["reuse_fraction"] == 0.0
    assert all(torch.equal(a, b) for a, b in zip(ref, out))


def test_int8_cache_is_smaller_than_fp32(dit):
    sizes = {}
    for mode in ("fp32", "fp16", "int8_tensor", "int8_channel"):
        ctl = apply_dqar(dit, DQARConfig.preset("always", cache_mode=mode))
        run_steps(dit, dit_inputs)
        sizes[mode] = ctl.stats()["cache_bytes"]
        remove_dqar(dit)
    assert sizes["int8_tensor"] < sizes["fp16"] < sizes["fp32"]
    assert sizes["int8_channel"] < sizes["fp16"]


def test_prompt_length_sets_tau(pixart):
    ctl = apply_dqar(pixart, DQARConfig.preset("entropy", tau_slope=0.1, p_ref=77))
    run_steps(pixart, pixart_inputs)
    assert ctl.prompt_length == 5  # tokens of encoder_hidden_states
    remove_dqar(pixart)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 0, 0, 0]])
    ctl = apply_dqar(pixart, "gates")
    with torch.no_grad():
        pixart(**pixart_inputs(), encoder_attention_mask=mask)
    assert ctl.prompt_length == 3
    remove_dqar(pixart)
    assert apply_dqar(pixart, "gates", prompt_length=120).prompt_length == 120


def test_diffusers_pipeline_runs_unchanged():
    from diffusers import AutoencoderKL, DDIMScheduler, DiTPipeline, DiTTransformer2DModel

    torch.manual_seed(0)
    transformer = DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8,
                                        num_layers=2, sample_size=8, patch_size=2, num_embeds_ada_norm=1000).eval()
    vae = AutoencoderKL(block_out_channels=(8,), norm_num_groups=8, latent_channels=4, sample_size=16).eval()
    pipe = DiTPipeline(transformer=transformer, vae=vae, scheduler=DDIMScheduler())

    def run():
        return pipe([1, 2], num_inference_steps=6, guidance_scale=2.0, output_type="np",
                    generator=torch.Generator().manual_seed(0)).images

    ref = run()
    ctl = apply_dqar(pipe.transformer, "off", scheduler=pipe.scheduler)
    assert (run() == ref).all()
    remove_dqar(pipe.transformer)
    ctl = apply_dqar(pipe.transformer, "always", scheduler=pipe.scheduler)
    out = run()
    assert ctl.stats()["steps"] == 6 and ctl.stats()["reuse_fraction"] == pytest.approx(5 / 6)
    assert not (out == ref).all()


def test_csb_cache_mode_uses_a_calibration(dit, tmp_path):
    from dqar_lib.fitting.cache_fit import collect_cache_tensors, fit_csb_calibration
    from dqar_lib.method.storage import save_csb_calibration

    calib = fit_csb_calibration(collect_cache_tensors(dit, [0, 1], num_steps=4))
    path = save_csb_calibration(tmp_path / "c.pt", calib, meta={"recommended_mode": "csb"})
    fp32 = apply_dqar(dit, DQARConfig.preset("always", cache_mode="fp32"))
    ref = run_steps(dit, dit_inputs)
    remove_dqar(dit)
    ctl = apply_dqar(dit, DQARConfig.preset("always", cache_mode="csb", cache_calibration=str(path)))
    out = run_steps(dit, dit_inputs)
    entry = ctl.cache._entries[(0, "out")][-1]
    assert entry.q.data.dtype == torch.int8 and entry.q.b is not None
    rel = (out[-1] - ref[-1]).norm() / ref[-1].norm()
    assert 0 < rel < 0.05 and fp32.stats()["reuse_fraction"] == ctl.stats()["reuse_fraction"]
    remove_dqar(dit)
    with pytest.raises(ValueError, match="c.pt has no calibration for"):
        apply_dqar(tiny_dit(depth=5), DQARConfig.preset("always", cache_mode="csb", cache_calibration=str(path)))
    with pytest.raises(ValueError, match="needs a calibration file"):
        DQARConfig.preset("gates", cache_mode="csb")


def test_block_granularity_reuses_the_block_residual(model_and_inputs):
    model, inputs = model_and_inputs
    ref = run_steps(model, inputs)
    ctl = apply_dqar(model, DQARConfig.preset("always", granularity="block"))
    out = run_steps(model, inputs)
    assert ctl.stats()["reuse_fraction"] == pytest.approx(0.8)
    assert {k for (_, k) in ctl.cache._entries} == {"res"}
    assert torch.equal(ref[0], out[0]) and not torch.equal(ref[-1], out[-1])


def test_block_reuse_at_the_same_step_reproduces_the_block(dit):
    ctl = apply_dqar(dit, DQARConfig.preset("always", granularity="block"))
    with torch.no_grad():
        a = dit(**dit_inputs(t=500)).sample
        b = dit(**dit_inputs(t=500)).sample  # same input, every block served from its cache
    assert ctl.stats()["per_layer_reuse"] == [1, 1, 1]
    assert torch.allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("granularity", ["attn", "block"])
def test_compiled_compute_paths_do_not_recompile_per_step(dit, granularity):
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    cfg = DQARConfig.preset("gates", granularity=granularity, tau=1.0, snr_lo=0.0, warmup=0.0)
    ctl = apply_dqar(dit, cfg, compile=True, compile_options={"backend": "eager"})
    run_steps(dit, dit_inputs, timesteps=range(900, 0, -100))
    graphs = counters["stats"]["unique_graphs"]
    run_steps(dit, dit_inputs, timesteps=range(900, 0, -100))  # a second run: nothing new to compile
    assert 0.1 < ctl.stats()["reuse_fraction"] < 0.9
    assert graphs > 0 and counters["stats"]["unique_graphs"] == graphs
    remove_dqar(dit)


def test_outputs_no_later_step_can_reuse_are_not_stored(dit):
    from dqar_lib.models.sampling import make_scheduler

    sched = make_scheduler("ddim")
    sched.set_timesteps(10)
    cfg = DQARConfig.preset("gates", tau=1.0, snr_lo=0.0, warmup=0.5, schedule_depth_start=0.34)
    ctl = apply_dqar(dit, cfg, scheduler=sched)
    sizes = []
    with torch.no_grad():
        for t in sched.timesteps:
            dit(**dit_inputs(t=int(t)))
            sizes.append(len(ctl.cache))
    # warmup ends at step 4 (t=500): the first store is at step 3, for the two layers the schedule admits then;
    # the deepest layer is admitted later
    assert sizes == [0, 0, 0, 2, 2, 2, 3, 3, 3, 3]
    assert ctl.stats()["reuse_fraction"] > 0 and ctl.trace()[15]["reason"] != "missing"
