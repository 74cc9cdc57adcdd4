import json
import math
import time

import pytest
import torch
from conftest import dit_inputs, pixart_inputs
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from dqar_lib import PRESETS, DQARConfig, tiny_dit, tiny_pixart
from dqar_lib.evaluation.analysis import write_bench
from dqar_lib.evaluation.flops import attention_ceiling, dqar_flops, forward_flops
from dqar_lib.evaluation.run_sampling import bench_sampling
from dqar_lib.evaluation.timing import time_fn

# ---- flops ------------------------------------------------------------------------------------------


def test_forward_flops_match_a_hand_count():
    m = tiny_dit(depth=1)  # width D = 32, N = (8 / 2)^2 = 16 tokens, 3 channels, patch 2
    f = forward_flops(m, batch=1)
    N, D = 16, 32
    assert f["attn_qkv"] == 3 * 2 * N * D * D == 3 * 32768
    assert f["attn_out"] == 32768
    assert f["attn_core"] == 4 * N * N * D == 32768
    assert f["mlp"] == 2 * N * D * 4 * D * 2 == 262144
    assert f["adaln"] == 2 * 256 * D + 2 * D * D + 2 * D * 6 * D == 30720
    assert f["embed"] == 2 * N * (3 * 2 * 2) * D == 12288
    assert f["final"] == (2 * 256 * D + 2 * D * D) + 2 * D * 2 * D + 2 * N * D * 12 == 34816
    assert f["total"] == 131072 + 32768 + 262144 + 30720 + 12288 + 34816
    assert f["cross_attn"] == 0 and f["per_block"]["mlp"] == f["mlp"]
    assert forward_flops(tiny_dit(depth=3), batch=4)["total"] == 4 * (f["total"] + 2 * (f["total"] - 12288 - 34816))


@pytest.mark.parametrize("which", ["dit", "pixart"])
def test_forward_flops_match_torch_flop_counter(which):
    if which == "dit":
        model, inputs, text = tiny_dit(), dit_inputs(batch=2), None
    else:
        model, inputs, text = tiny_pixart(), pixart_inputs(batch=2), 5
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(**inputs)
    assert forward_flops(model, 2, text_tokens=text)["total"] == counter.get_total_flops()


def test_reuse_ratios_behave(dit):
    full = forward_flops(dit, 2)
    assert dqar_flops(dit, 2, 0.0) == full["total"]
    assert dqar_flops(dit, 2, [0.0, 0.0, 0.0], "kv") == full["total"]
    all_reused = dqar_flops(dit, 2, 1.0)
    assert all_reused == full["total"] - full["attn_qkv"] - full["attn_out"] - full["attn_core"]
    assert attention_ceiling(dit, 2) == pytest.approx(full["total"] / all_reused) and attention_ceiling(dit, 2) > 1
    assert dqar_flops(dit, 2, 1.0, "kv") == full["total"] - full["attn_qkv"] * 2 / 3
    half = dqar_flops(dit, 2, [1.0, 0.0, 0.0])
    assert half == pytest.approx(full["total"] - full["per_block"]["attn_qkv"] - full["per_block"]["attn_out"]
                                 - full["per_block"]["attn_core"])
    assert dqar_flops(dit, 2, 0.0, cfg_shared=1.0) == pytest.approx((full["total"] + all_reused) / 2)


def test_dit_xl_ceiling_is_in_the_measured_range():
    from dqar_lib.models.zoo import REAL_MODELS

    cfg = REAL_MODELS["facebook/DiT-XL-2-256"]["config"]
    ceiling = attention_ceiling(cfg, 2)  # a config dict works like a model
    # self-attention is (8 + 4 * 256 / 1152) / (24 + 4 * 256 / 1152) = 36% of a block's FLOPs, so about 1.55x;
    # DESIGN.md section 2 measures 1.27-1.36x in time on an H100: FLOPs bound what time can show
    assert 1.5 < ceiling < 1.6


@pytest.mark.parametrize("call,message", [
    (lambda m: forward_flops(m, 0), "batch must be a positive integer, got 0"),
    (lambda m: dqar_flops(m, 1, 1.5), r"reuse_fraction must lie in \[0, 1\], got 1.5"),
    (lambda m: dqar_flops(m, 1, [0.5]), "reuse_fraction has 1 entries but the model has 3 blocks"),
    (lambda m: dqar_flops(m, 1, 0.5, "mlp"), "granularity must be one of .*'mlp'"),
    (lambda m: forward_flops(tiny_pixart(), 1), "text_tokens must be a positive integer .* got None"),
    (lambda m: forward_flops(torch.nn.Linear(2, 2), 1), "Linear is not a DiT/PixArt-style transformer"),
])
def test_flops_bad_arguments(dit, call, message):
    with pytest.raises(ValueError, match=message):
        call(dit)


# ---- timing -----------------------------------------------------------------------------------------


def test_time_fn_counts_calls_and_summarises():
    calls = []
    out = time_fn(lambda: calls.append(1), warmup=2, repeats=5, device="cpu")
    assert len(calls) == 7 and len(out["times_ms"]) == 5
    assert out["min_ms"] <= out["median_ms"] <= out["max_ms"] and out["iqr_ms"] >= 0
    assert out["peak_memory_bytes"] is None
    slow = time_fn(lambda: time.sleep(0.02), warmup=0, repeats=2, device="cpu")
    assert 19 < slow["median_ms"] < 500


@pytest.mark.parametrize("kwargs,message", [
    (dict(repeats=0), "repeats must be an integer >= 1, got 0"),
    (dict(warmup=-1), "warmup must be an integer >= 0, got -1"),
    (dict(fn=3), "fn must be callable, got int"),
])
def test_time_fn_bad_arguments(kwargs, message):
    args = dict(fn=lambda: None, device="cpu") | kwargs
    with pytest.raises(ValueError, match=message):
        time_fn(**args)


def test_bench_sampling_rows(dit, tmp_path):
    configs = {"full": None, "off": "off", "always": DQARConfig.preset("always")}
    rows = bench_sampling(dit, [0, 1], configs, num_steps=4, seed=3, repeats=2, warmup=1, progress=False)
    full, off, always = rows
    assert [r["method"] for r in rows] == ["full", "off", "always"] and all(r["baseline"] == "full" for r in rows)
    assert all(len(r["times_ms"]) == 2 and r["median_ms"] > 0 for r in rows)
    assert full["speedup"] == 1.0 and full["ms_per_step"] == pytest.approx(full["median_ms"] / 4)
    assert full["ms_per_image"] == pytest.approx(full["median_ms"] / 2)
    # full compute and the "off" preset give identical images and FLOPs; "always" reuses 3 of 4 steps
    assert math.isinf(full["psnr"]) and math.isinf(off["psnr"]) and off["ssim"] == pytest.approx(1.0)
    assert off["reuse_fraction"] == 0.0 and off["flops_ratio"] == 1.0
    assert full["config"] is None and off["config"] == PRESETS["off"].changes()
    assert off["config"]["decide.kind"] == "off"
    assert always["reuse_fraction"] == pytest.approx(3 / 4)
    assert math.isfinite(always["psnr"]) and always["ssim"] < 1.0
    per_image_full = 4 * forward_flops(dit, 4)["total"] / 2  # guidance 1.5: batch 2 labels x 2 halves
    assert full["flops_per_image"] == per_image_full
    ceiling = attention_ceiling(dit, 4)
    assert always["flops_ratio"] == pytest.approx(4 / (1 + 3 / ceiling)) and always["attention_ceiling"] == ceiling
    path = write_bench(tmp_path / "bench.json", rows, dict(steps=4))
    saved = json.loads(path.read_text())
    assert saved["manifest"]["params"] == {"steps": 4} and saved["result"]["rows"][2]["method"] == "always"


def test_bench_compile_is_undone(dit):
    from torch._dynamo.utils import counters

    captured = counters["stats"]["calls_captured"]
    flag = torch._dynamo.config.skip_nnmodule_hook_guards
    rows = bench_sampling(dit, [0], {"full": None, "dqar": "dqar"}, num_steps=2, guidance_scale=1.0, repeats=1,
                          warmup=0, compile=True, compile_options=dict(backend="eager"), progress=False)
    assert rows[0]["compiled"] and rows[0]["flops_per_image"] == 2 * forward_flops(dit, 1)["total"]
    assert counters["stats"]["calls_captured"] > captured  # the blocks did run through torch.compile
    assert all(block._compiled_call_impl is None for block in dit.transformer_blocks)
    assert torch._dynamo.config.skip_nnmodule_hook_guards is flag  # the guard flag it turned off is back


@pytest.mark.parametrize("kwargs,message", [
    (dict(configs={}), "configs must name at least one method, got {}"),
    (dict(scheduler="euler"), "scheduler must be one of .*'euler'"),
    (dict(repeats=0), "repeats must be an integer >= 1, got 0"),
    (dict(num_steps=0), "num_steps must be a positive integer, got 0"),
    (dict(configs={"x": 3}), r"configs values must be None, a preset name, a DQARConfig or a Method .*'x': .*"
                             r"got 3 \(int\)"),
    (dict(configs={"x": "turbo", "y": "off"}), "'x': unknown DQAR preset 'turbo'"),
])
def test_bench_bad_arguments(dit, kwargs, message):
    args = dict(configs={"full": None}, num_steps=2, repeats=1, progress=False) | kwargs
    with pytest.raises(ValueError, match=message):
        bench_sampling(dit, [0], **args)


def test_bench_runs_dqar_exactly_as_sample_does(dit):
    """Each run is run_method; DQAR's latents are sample(dqar=...)'s, bit for bit (latent_rel_l2 of the same pair)."""
    from dqar_lib import sample

    configs = {"full": None, "always": "always",
               "dqar": DQARConfig.preset("gates", tau=1.0, snr_lo=0.0, warmup=0.0, cfg_share=True)}
    rows = bench_sampling(dit, [0, 1], configs, num_steps=5, seed=2, repeats=1, warmup=0, progress=False)
    full = sample(dit, [0, 1], num_steps=5, seed=2, progress=False).latents.float()
    for row in rows[1:]:
        res = sample(dit, [0, 1], num_steps=5, seed=2, dqar=configs[row["method"]], progress=False)
        assert row["latent_rel_l2"] == ((res.latents.float() - full).norm() / full.norm()).item() > 0
        assert row["reuse_fraction"] == res.stats["reuse_fraction"] > 0
        assert row["config"] == res.controller.config.changes()


def test_write_bench_refuses_no_rows(tmp_path):
    with pytest.raises(ValueError, match=r"rows must hold at least one benchmark row, got \[\]"):
        write_bench(tmp_path / "b.json", [])
    assert not (tmp_path / "b.json").exists()


def test_bench_runs_peers_beside_dqar():
    from dqar_lib.evaluation.peers import PEERS
    from dqar_lib.evaluation.ptq import W8A8Peer

    model = tiny_dit()
    rows = bench_sampling(model, [0, 1], {"full": None, "pab": PEERS["pab"](), "w8a8": W8A8Peer(calib_steps=2),
                                          "always": "always"}, num_steps=6, repeats=1, warmup=0, progress=False)
    by = {r["method"]: r for r in rows}
    assert by["pab"]["config"]["peer"] == "pab" and 0 < by["pab"]["reuse_fraction"] < 1
    assert by["pab"]["flops_ratio"] > 1.0 and by["pab"]["psnr"] < float("inf")
    assert by["w8a8"]["reuse_fraction"] == 0.0 and by["w8a8"]["flops_ratio"] == 1.0
    assert 10 < by["w8a8"]["psnr"] < float("inf")
    assert not any(hasattr(m, "_diffusers_hook") or "forward" in vars(m) for m in model.modules())


def test_bench_compiled_dqar_uses_regional_compile():
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    model = tiny_dit()
    cfg = DQARConfig.preset("gates", tau=1.0, snr_lo=0.0, warmup=0.0)
    rows = bench_sampling(model, [0, 1], {"full": None, "dqar": cfg}, num_steps=6, repeats=2, warmup=1,
                          compile=True, compile_options=dict(backend="eager"), progress=False)
    graphs = counters["stats"]["unique_graphs"]
    assert rows[1]["compiled"] and 0 < rows[1]["reuse_fraction"] < 1
    assert rows[1]["psnr"] < float("inf")  # it reused: a graph compiled before DQAR's hooks was not served
    assert graphs <= 4  # full compute's block graph; DQAR's block graph with and without the Q/K capture
    again = bench_sampling(model, [0, 1], {"full": None, "dqar": cfg}, num_steps=9, repeats=1, warmup=0,
                           compile=True, compile_options=dict(backend="eager"), progress=False)
    # more steps, same plan shapes: a fresh benchmark compiles the same graphs, nothing more
    assert [r["compiled_graphs"] for r in again] == [r["compiled_graphs"] for r in rows]
    assert counters["stats"]["unique_graphs"] == 2 * graphs
    assert all(block._compiled_call_impl is None for block in model.transformer_blocks)
    assert not any("forward" in vars(m) for m in model.modules())


def test_gpu_bench_cli_runs_on_cpu(tmp_path):
    from dqar_lib.artifacts import read_result
    from dqar_lib.evaluation.run_gpu import main

    main(["--out", str(tmp_path), "--models", "tiny", "--batch", "2", "--steps", "3", "--repeats", "1",
          "--device", "cpu"])
    eager, compiled = read_result(tmp_path / "tiny-eager.json"), read_result(tmp_path / "tiny-compiled.json")
    names = [r["method"] for r in eager["result"]["rows"]]
    assert names[0] == "full" and "gates, attn" in names and "diffusers pab" in names
    assert "torchao int8_dynamic" in names
    assert all(r["compiled"] for r in compiled["result"]["rows"])
    assert eager["manifest"]["params"]["weights"].startswith("random")
    assert eager["result"]["rows"][1]["latent_rel_l2"] > 0 == eager["result"]["rows"][0]["latent_rel_l2"]
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path), "--models", "DiT-XXL"])


def test_gpu_bench_runs_pixart_on_caption_embeddings(tmp_path):
    from dqar_lib.artifacts import read_result
    from dqar_lib.evaluation.run_gpu import default_batch, main

    assert default_batch("PixArt-alpha/PixArt-Sigma-XL-2-1024-MS") < default_batch("facebook/DiT-XL-2-512") \
        < default_batch("facebook/DiT-XL-2-256") == 8
    main(["--out", str(tmp_path), "--models", "tiny-pixart", "--batch", "2", "--steps", "3", "--repeats", "1",
          "--device", "cpu"])
    res = read_result(tmp_path / "tiny-pixart-eager.json")
    rows = {r["method"]: r for r in res["result"]["rows"]}
    assert rows["full"]["psnr"] is None and rows["full"]["latent_rel_l2"] == 0  # latents only: no VAE
    assert rows["gates, attn"]["reuse_fraction"] > 0 and rows["gates, attn"]["latent_rel_l2"] > 0
    assert rows["gates, attn"]["flops_ratio"] > 1 and rows["full"]["attention_ceiling"] > 1  # FLOPs count the captions
    assert (tmp_path / "tiny-pixart-compiled.json").is_file()


def test_dominating_lists_strictly_better_points():
    import pandas as pd

    from dqar_lib.evaluation.analysis import dominating

    df = pd.DataFrame({"speedup": [1.0, 1.2, 1.3, 1.2, 1.5, 1.2], "psnr": [float("inf"), 33.0, 34.0, 33.0, 20.0, 33.5]},
                      index=["full", "dqar", "better", "tie", "faster only", "closer only"])
    assert dominating(df) == ["better", "closer only"]
    with pytest.raises(ValueError, match="method 'policy' is not in the table"):
        dominating(df, "policy")


def test_compiled_run_that_would_fall_back_to_eager_is_refused(monkeypatch):
    """dynamo's default on hitting its recompile limit is a warning and a silent eager run; the benchmark fails
    instead, naming the method, and counts each method's compiled graphs otherwise."""
    import dqar_lib.evaluation.timing as timing

    torch._dynamo.reset()
    model = tiny_dit()
    rows = bench_sampling(model, [0, 1], {"full": None}, num_steps=2, repeats=1, warmup=0, compile=True,
                          compile_options=dict(backend="eager"), progress=False)
    assert rows[0]["compiled_graphs"] >= 1
    torch._dynamo.reset()
    monkeypatch.setattr(timing, "compile_limits", lambda n: dict(recompile_limit=1, fail_on_recompile_limit_hit=True))
    with pytest.raises(RuntimeError, match="compiled run of 'full' hit dynamo's recompile limit"):
        bench_sampling(model, [0, 1], {"full": None}, num_steps=2, repeats=1, warmup=0, compile=True,
                       compile_options=dict(backend="eager"), progress=False)
    assert torch._dynamo.config.recompile_limit == 8  # the patch is undone


def test_bench_collects_a_failing_method_and_times_the_rest(dit):
    from dqar_lib.evaluation.methods import Method

    class Broken(Method):
        name, params = "broken", {}

        def apply(self, model):
            raise RuntimeError("no kernel for this dtype")

        def remove(self, model):
            pass

    configs = {"full": None, "broken": Broken(), "dqar": "dqar"}
    errors = {}
    rows = bench_sampling(dit, [0], configs, num_steps=3, repeats=1, warmup=0, progress=False, errors=errors)
    assert [r["method"] for r in rows] == ["full", "dqar"]
    assert errors == {"broken": "RuntimeError: no kernel for this dtype"}
    with pytest.raises(RuntimeError, match="no kernel for this dtype"):
        bench_sampling(dit, [0], configs, num_steps=3, repeats=1, warmup=0, progress=False)


def test_cuda_graph_baseline_refuses_a_cpu_model_and_leaves_it_unpatched(dit):
    from dqar_lib.evaluation.graphed import CUDAGraphFull

    with pytest.raises(ValueError, match="needs a model on a CUDA device; this one is on cpu"):
        CUDAGraphFull().apply(dit)
    assert "forward" not in vars(dit)
    with pytest.raises(ValueError, match="warmup must be a positive integer"):
        CUDAGraphFull(warmup=0)


def test_gpu_bench_replays_the_fronts_fitted_plans_at_any_depth():
    from dqar_lib.artifacts import FRONT, read_result
    from dqar_lib.evaluation.run_gpu import PLAN_BUDGETS, methods, replayed_plans

    plans = replayed_plans(28)
    assert list(plans) == [f"DQAR plan {b:.2f}" for b in PLAN_BUDGETS]
    skip = read_result(FRONT)["result"]["plans"]["0.58"]["skip"]
    cfg = plans["DQAR plan 0.58"]
    assert cfg.granularity == "stack" and len(cfg.decide.plan) == len(skip) == 50
    assert all(row == (s,) * 28 for row, s in zip(cfg.decide.plan, skip))
    assert replayed_plans(28, path="/nonexistent/front.json") == {}
    assert "DQAR plan 0.58" in methods(False, (), 28, steps=50)
    assert "DQAR plan 0.58" not in methods(False, (), 28, steps=20)
    assert "full, CUDA graph" in methods(False, (), 28, graphs=True) and "full, CUDA graph" not in methods(False)


def test_gpu_bench_runs_only_the_named_methods_and_modes(tmp_path):
    from dqar_lib.artifacts import read_result
    from dqar_lib.evaluation.run_gpu import main

    main(["--out", str(tmp_path), "--models", "tiny", "--batch", "1", "--steps", "50", "--repeats", "1",
          "--device", "cpu", "--modes", "eager", "--methods", "dqar", "DQAR plan 0.58"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny-eager.json"]
    rows = {r["method"]: r for r in read_result(tmp_path / "tiny-eager.json")["result"]["rows"]}
    assert list(rows) == ["full", "dqar", "DQAR plan 0.58"] and rows["DQAR plan 0.58"]["reuse_fraction"] == 0.58
    with pytest.raises(ValueError, match=r"--methods names \['dqra'\], which this run does not have"):
        main(["--out", str(tmp_path), "--models", "tiny", "--device", "cpu", "--steps", "2", "--methods", "dqra"])


def test_against_baselines_reads_each_row_against_every_full_compute_variant():
    import pandas as pd

    from dqar_lib.evaluation.analysis import against_baselines

    df = pd.DataFrame(dict(model="m", compiled=[False, False, False, True, True],
                           method=["full", "full, CUDA graph", "dqar", "full", "dqar"],
                           median_ms=[400.0, 100.0, 200.0, 160.0, 80.0], iqr_ms=1.0, reuse_fraction=0.5))
    t = against_baselines(df).set_index(["compiled", "method"])
    assert t.loc[(True, "dqar"), "x vs compiled"] == 2.0 and t.loc[(True, "dqar"), "x vs CUDA graph"] == 1.25
    assert t.loc[(False, "dqar"), "x vs eager"] == 2.0 and t.loc[(False, "full, CUDA graph"), "x vs eager"] == 4.0
    assert t.loc[(True, "dqar"), "same_run"] == "compiled"
    assert against_baselines(df[df.method != "full, CUDA graph"])["x vs CUDA graph"].isna().all()


def test_gpu_finding_names_the_baselines_and_the_best_compiled_dqar_row():
    import pandas as pd

    from dqar_lib.evaluation.analysis import best_compiled, finding

    df = pd.DataFrame(dict(model="org/DiT-XL-2-256", compiled=[False, False, True, True, True],
                           method=["full", "full, CUDA graph", "full", "dqar", "DQAR plan 0.56"],
                           median_ms=[400.0, 100.0, 160.0, 80.0, 100.0], iqr_ms=1.0, reuse_fraction=0.5,
                           speedup=[1.0, 4.0, 1.0, 2.0, 1.6], device="GPU X", weights="random (no hub)",
                           images=8, steps=50))
    assert best_compiled(df).method == "dqar" and best_compiled(df[df.compiled & (df.method == "full")]) is None
    text = finding(df)
    assert "DiT-XL-2-256 with random weights in fp16 (8 images with CFG, DDIM-50)" in text
    assert "makes it 4.00x faster" in text and "2.00x the compiled fp16 baseline and 1.25x the CUDA-graphed" in text
    assert finding(df.iloc[:0]) == "No GPU run is committed yet."
