"""The benchmark on pipelines run through their own pipe(...) (tiny SD3 and Flux, saved to folders, no encoders)."""

import re

import pytest
import torch
from conftest import cli_error

from dqar_lib import benchmark
from dqar_lib.artifacts import read_result
from dqar_lib.evaluation.run_pipeline import load_embeds, pipeline_call, run_pipeline_benchmark
from dqar_lib.models.pipelines import load_pipeline, pipeline_driven, tiny_dit_pipeline
from dqar_lib.models.tiny_pipelines import tiny_pipeline

NAMES = ["StableDiffusion3Pipeline", "FluxPipeline"]
FAST = ["--steps", "8", "--repeats", "1", "--warmup", "0", "--no-clip", "--quiet", "--num-prompts", "3"]


def _embeds(kwargs) -> dict:
    return {k: v for k, v in kwargs.items() if torch.is_tensor(v)}  # (1, ...) each


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Each tiny pipeline saved without its text encoders, its embeddings (2 prompts) and its image size."""
    root = tmp_path_factory.mktemp("joint")
    out = {}
    for name in NAMES:
        pipe, kwargs = tiny_pipeline(name)
        pipe.save_pretrained(root / name)
        emb = {k: torch.cat([v, v.flip(-1)]) for k, v in _embeds(kwargs).items()}  # 2 prompts
        torch.save(emb, root / f"{name}.pt")
        out[name] = (root / name, root / f"{name}.pt", kwargs["height"])
    tiny_dit_pipeline().save_pretrained(root / "dit")
    out["dit"] = root / "dit"
    return out


@pytest.mark.parametrize("name", NAMES)
def test_cli_runs_full_and_dqar_through_the_pipeline(saved, tmp_path, name):
    folder, emb, size = saved[name]
    path = benchmark.main(["--model", str(folder), "--embeds", str(emb), "--height", str(size), "--width", str(size),
                           "--output-dir", str(tmp_path), *FAST])
    res = read_result(path)
    r, params = res["result"], res["manifest"]["params"]
    assert r["complete"] and [row["method"] for row in r["rows"]] == ["full", "dqar"]
    assert r["conditions"] == ["embedding 0", "embedding 1", "embedding 0"]  # cycled to --num-prompts
    full, dq = r["rows"]
    assert full["psnr"] == float("inf") and dq["reuse_fraction"] > 0 and 10 < dq["psnr"] < float("inf")
    assert dq["timed"] == full["timed"] == "pipe(...) to latents"
    assert params["pipeline"] == name and params["scheduler"] == "FlowMatchEulerDiscreteScheduler"
    for row in r["rows"]:
        pngs = sorted((tmp_path / row["image_dir"]).glob("image_*.png"))
        assert len(pngs) == 3 and row["steps"] == 8 and row["ms_per_image"] > 0


def test_cli_sweep_through_the_pipeline(saved, tmp_path):
    folder, emb, size = saved["FluxPipeline"]
    path = benchmark.main(["--model", str(folder), "--embeds", str(emb), "--height", str(size), "--width", str(size),
                           "--sweep", "--sweep-tau", "0.9", "1.0", "--sweep-streak", "1", "--output-dir",
                           str(tmp_path), *FAST])
    rows = read_result(path)["result"]["rows"]
    assert [r["method"] for r in rows] == ["full", "tau=0.9, cap=1", "tau=1, cap=1"]
    assert rows[2]["sweep"] == dict(tau=1.0, cap=1) and rows[2]["reuse_fraction"] > 0


def test_off_through_the_pipeline_is_bit_identical_and_the_seed_is_shared(tmp_path):
    pipe, kwargs = tiny_pipeline("StableDiffusion3Pipeline")
    call = pipeline_call(pipe, 2, embeds=_embeds(kwargs), height=kwargs["height"], width=kwargs["width"])
    rows = run_pipeline_benchmark(pipe, call, {"full": None, "off": "off", "always": "always"}, tmp_path,
                                  num_steps=4, repeats=1, progress=False)
    assert rows[1]["psnr"] == float("inf") and rows[1]["reuse_fraction"] == 0
    assert rows[2]["psnr"] < float("inf") and rows[2]["reuse_fraction"] > 0


def test_loading_a_folder_saved_without_text_encoders(saved):
    pipe = load_pipeline(saved["FluxPipeline"][0])
    assert pipe.text_encoder is None and pipeline_driven(pipe)
    assert not pipeline_driven(load_pipeline(saved["dit"]))


@pytest.mark.parametrize("args, message", [
    (["--peers", "pab"], r"FluxPipeline, which the benchmark runs through pipe\(\.\.\.\).*: --peers apply only"),
    (["--compile", "--scheduler", "ddim"], r": --compile, --scheduler apply only to DiT- and PixArt-style"),
])
def test_flags_that_cannot_apply_to_a_pipeline_run_are_named(saved, tmp_path, capsys, args, message):
    folder, emb, _ = saved["FluxPipeline"]
    err = cli_error(capsys, ["--model", folder, "--embeds", emb, "--output-dir", tmp_path, *FAST, *args])
    assert re.search(message, err), err


def test_prompts_without_a_text_encoder_and_embeds_on_dit_are_refused(saved, tmp_path, capsys):
    err = cli_error(capsys, ["--model", saved["FluxPipeline"][0], "--prompts", "a cat", "--output-dir", tmp_path,
                             *FAST])
    assert "has no text encoder" in err and "--embeds FILE" in err
    err = cli_error(capsys, ["--model", saved["dit"], "--embeds", saved["FluxPipeline"][1], "--output-dir", tmp_path,
                          *FAST])
    assert "--embeds apply to pipelines run through pipe(...)" in err and "DiTPipeline" in err


def test_bad_embeds_are_named(tmp_path):
    pipe, kwargs = tiny_pipeline("FluxPipeline")
    emb = _embeds(kwargs)
    with pytest.raises(ValueError, match=r"FluxPipeline\(\.\.\.\) takes no \['prompt_embedz'\]"):
        pipeline_call(pipe, 2, embeds=dict(emb, prompt_embedz=emb["prompt_embeds"]))
    with pytest.raises(ValueError, match=r"disagree on the number of prompts .*'pooled_prompt_embeds': 2"):
        pipeline_call(pipe, 2, embeds=dict(emb, pooled_prompt_embeds=emb["pooled_prompt_embeds"].repeat(2, 1)))
    with pytest.raises(ValueError, match=r"\['output_type'\] are set by the benchmark itself"):
        pipeline_call(pipe, 2, embeds=kwargs)
    with pytest.raises(ValueError, match="exactly one of them"):
        pipeline_call(pipe, 2)
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(ValueError, match=r"holds a list; expected a dict of pipe\(\.\.\.\) arguments"):
        load_embeds(tmp_path / "list.pt")
