"""`python -m dqar_lib.benchmark` end to end on tiny random pipelines saved to folders (nothing is downloaded)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import cli_error

from dqar_lib import benchmark, load_calibration
from dqar_lib.artifacts import read_result

REPO = Path(__file__).resolve().parent.parent
PROMPTS = ["a red fox", "an old lighthouse on a rocky coast at dawn with gulls circling", "a cat"]
FAST = ["--steps", "3", "--repeats", "1", "--warmup", "0", "--no-clip", "--quiet"]


def _run(argv) -> dict:
    path = benchmark.main([str(a) for a in argv])
    return read_result(path)


def _prompt_file(tmp_path, fmt: str) -> Path:
    path = tmp_path / f"prompts.{fmt}"
    if fmt == "txt":
        path.write_text("\n".join(PROMPTS) + "\n\n")
    elif fmt == "json":
        path.write_text(json.dumps(PROMPTS))
    else:
        path.write_text("\n".join(json.dumps({"id": i, "caption": p}) for i, p in enumerate(PROMPTS)))
    return path


@pytest.mark.parametrize("fmt", ["txt", "json", "jsonl"])
def test_pixart_prompts_from_each_file_format(folders, tmp_path, fmt):
    out = tmp_path / "out"
    res = _run(["--model", folders / "pixart", "--prompts-file", _prompt_file(tmp_path, fmt), "--prompt-field",
                "caption", "--num-prompts", "4", "--output-dir", out, *FAST])
    r = res["result"]
    assert r["complete"] and r["conditions"] == PROMPTS + PROMPTS[:1]  # cycled to --num-prompts
    assert r["prompt_tokens"][1] > r["prompt_tokens"][0] > r["prompt_tokens"][2] - 5  # lengths reach tau(p)
    assert [row["method"] for row in r["rows"]] == ["full", "dqar"]
    for row in r["rows"]:
        assert len(list((out / row["image_dir"]).glob("image_*.png"))) == 4
        assert row["ms_per_image"] > 0 and row["peak_memory_bytes"] > 0 and row["steps"] == 3
        assert row["clip_score"] is None
    assert r["rows"][0]["psnr"] == float("inf") and r["clip_missing"] == "--no-clip"
    assert res["manifest"]["params"]["pipeline"] == "PixArtSigmaPipeline"
    assert (out / "benchmark_plot.png").read_bytes()[:4] == b"\x89PNG"


def test_dit_class_ids_default_to_id2label_and_overrides_reach_the_config(folders, tmp_path):
    res = _run(["--model", folders / "dit", "--num-prompts", "3", "--preset", "gates", "--set", "tau=1.0", "--set",
                "snr_lo=0",
                "--peers", "pab", "--output-dir", tmp_path, *FAST])
    r = res["result"]
    assert r["conditions"] == ["airplane", "automobile", "bird"]
    assert [row["method"] for row in r["rows"]] == ["full", "dqar (gates) + tau=1.0, snr_lo=0", "diffusers pab"]
    dqar_row = r["rows"][1]
    assert dqar_row["config"]["decide.tau"] == 1.0 and dqar_row["config"]["decide.snr_lo"] == 0.0
    assert dqar_row["reuse_fraction"] > 0 and dqar_row["psnr"] < float("inf")  # tau=1 lets blocks reuse


def test_sweep_scans_tau_and_the_reuse_cap(folders, tmp_path, fresh_reuse_warnings):
    with pytest.warns(RuntimeWarning, match="DQAR reused nothing.*not below tau=0.5"):  # the tau=0.5 points
        res = _run(["--model", folders / "dit", "--num-prompts", "2", "--sweep", "--sweep-tau", "0.5", "1.0",
                   "--sweep-streak", "1", "3", "--set", "snr_lo=0", "--output-dir", tmp_path, *FAST])
    rows = res["result"]["rows"]
    assert [r["method"] for r in rows] == ["full", "tau=0.5, cap=1", "tau=0.5, cap=3", "tau=1, cap=1", "tau=1, cap=3"]
    reuse = {(r["sweep"]["tau"], r["sweep"]["cap"]): r["reuse_fraction"] for r in rows[1:]}
    assert reuse[(0.5, 1)] == reuse[(0.5, 3)] == 0  # H_t of a random DiT lies far above 0.5
    assert 0 < reuse[(1.0, 1)] < reuse[(1.0, 3)]
    assert (tmp_path / "sweep_plot.png").read_bytes()[:4] == b"\x89PNG"


def test_calibrate_writes_a_fit_next_to_a_local_model(folders, tmp_path):
    import shutil

    model = tmp_path / "dit"
    shutil.copytree(folders / "dit", model)
    res = _run(["--model", model, "--calibrate", "--budget", "0.3", "--num-prompts", "2", "--output-dir",
                tmp_path / "out", *FAST])
    cfg = load_calibration(model)
    assert res["manifest"]["params"]["dqar_config"]["decide"]["tau"] == cfg.decide.tau < 1.0
    assert res["result"]["rows"][1]["method"] == "dqar (calibrated)"
    again = _run(["--model", model, "--calibration", model, "--num-prompts", "2", "--output-dir", tmp_path / "o2",
                  *FAST])
    assert again["manifest"]["params"]["dqar_config"] == cfg.to_dict()


@pytest.mark.parametrize("content,message", [
    ('{"prompts": ["a"]}', r"must hold a JSON array of prompts, got a dict"),
    ("[1, 2]", r"item 0 is not a non-empty string prompt: 1"),
    ("[]", r"holds no prompts"),
])
def test_bad_prompt_files_are_named(folders, tmp_path, capsys, content, message):
    import re

    path = tmp_path / "bad.json"
    path.write_text(content)
    err = cli_error(capsys, ["--model", folders / "pixart", "--prompts-file", path, "--output-dir", tmp_path, *FAST])
    assert str(path) in err and re.search(message, err), err


def test_bad_jsonl_line_and_field_are_named(folders, tmp_path, capsys):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "a cat"}\n{"text": "a dog"}\n')
    err = cli_error(capsys, ["--model", folders / "pixart", "--prompts-file", path, "--output-dir", tmp_path, *FAST])
    assert f"{path} line 2 has no field 'prompt'" in err


@pytest.mark.parametrize("args,message", [
    (["--set", "taux=0.9"], "override 'taux=0.9' names no DQARConfig field"),
    (["--set", "tau=2"], "tau=2.0 is not read by a config that decides by 'profile'"),
    (["--preset", "gates", "--set", "tau=2"], "Gates.tau=2.0 is invalid"),
    (["--set", "tau=high"], "override 'tau=high': tau takes a float"),
    (["--preset", "turbo"], "unknown DQAR preset 'turbo'"),
    (["--peers", "nope"], "unknown peers ['nope']"),
    (["--steps", "0"], "--steps must be >= 1, got 0"),
    (["--class-ids", "3", "1000"], "class ids [1000] are out of range for this model's 1000 classes: give ids from 0 "
                                   "to 999"),
    (["--prompts", "a cat"], "is class-conditional (DiTPipeline): give --class-ids, not prompts"),
])
def test_bad_arguments_fail_in_one_sentence(folders, tmp_path, capsys, args, message):
    err = cli_error(capsys, ["--model", folders / "dit", "--output-dir", tmp_path, *FAST, *args])
    assert message in err, err
    assert not (tmp_path / "benchmark_results.json").exists()


def test_missing_folder_is_named(tmp_path, capsys):
    err = cli_error(capsys, ["--model", tmp_path / "nowhere", "--output-dir", tmp_path, *FAST])
    assert "nowhere" in err and "neither a local folder nor a hub id" in err


def test_offline_prompt_url_names_the_url(folders, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DQAR_CACHE", str(tmp_path / "cache"))
    url = "http://127.0.0.1:9/prompts.jsonl"
    err = cli_error(capsys, ["--model", folders / "pixart", "--prompt-dataset-url", url, "--output-dir", tmp_path,
                             *FAST])
    assert f"could not download the prompt file {url}" in err
    assert not list((tmp_path / "cache").rglob("*.jsonl"))  # nothing cached from a failed download


def test_interrupted_run_leaves_valid_json(folders, tmp_path, monkeypatch):
    """A run stopped during the second method keeps the first method's row and images, marked incomplete."""
    import dqar_lib.evaluation.run_pipeline as bench_mod

    real, calls = bench_mod.time_method, []

    def stop_on_dqar(model, method, *args, **kwargs):
        calls.append(method)
        if method is not None:
            raise KeyboardInterrupt
        return real(model, method, *args, **kwargs)

    monkeypatch.setattr(bench_mod, "time_method", stop_on_dqar)
    with pytest.raises(KeyboardInterrupt):
        benchmark.main([str(a) for a in ["--model", folders / "dit", "--num-prompts", "2", "--output-dir", tmp_path,
                                         *FAST]])
    r = read_result(tmp_path / "benchmark_results.json")["result"]  # valid JSON, with a manifest
    assert r["complete"] is False and [row["method"] for row in r["rows"]] == ["full"]
    assert len(list((tmp_path / "baseline").glob("*.png"))) == 2
    assert not list(tmp_path.glob(".*.tmp"))  # no half-written file left behind


def test_python_m_entry_point_names_an_unreachable_hub_id(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-m", "dqar_lib.benchmark", "--model", "nobody/no-such-model",
                           "--output-dir", str(tmp_path)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert "'nobody/no-such-model'" in last and "offline" in last, proc.stderr[-2000:]
