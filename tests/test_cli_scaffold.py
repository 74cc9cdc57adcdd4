"""The reference scaffold's commands as its README writes them, on tiny pipeline folders and the embedded model
(offline): scripts/benchmark_dqar.py (= python -m dqar_lib.benchmark) and scripts/dummy_benchmark_sweep.py."""

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import cli_error

from dqar_lib import benchmark
from dqar_lib.artifacts import read_result

REPO = Path(__file__).resolve().parent.parent
PROMPTS = ["a red fox", "an old lighthouse", "a cat in a hat", "a bowl of fruit", "a mountain lake"]


def test_the_class_command_runs_as_written(folders, tmp_path):
    out = tmp_path / "outputs" / "dit-xl"
    cmd = [sys.executable, "scripts/benchmark_dqar.py", "--model", str(folders / "dit"), "--dtype", "fp16",
           "--steps", "30", "--guidance", "7.5", "--conditioning", "class", "--class-ids", "207,233,472,898",
           "--output-dir", str(out)]
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO))
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Expected types for id2label" not in done.stderr
    for folder in ("baseline", "dqar"):
        assert sorted(p.name for p in (out / folder).glob("*.png")) == [f"image_00{i}.png" for i in range(4)]
    res = read_result(out / "benchmark_results.json")
    r = res["result"]
    assert r["complete"] and r["conditions"] == ["class 207", "class 233", "class 472", "class 898"]
    for row in r["rows"]:
        assert row["mean_ms"] > 0 and row["std_ms"] >= 0 and row["peak_memory_bytes"] > 0 and row["steps"] == 30
        assert row["mean_ms"] == pytest.approx(sum(row["times_ms"]) / len(row["times_ms"]))
    assert [row["image_dir"] for row in r["rows"]] == ["baseline", "dqar"]
    p = res["manifest"]["params"]
    assert p["dtype"] == "torch.float16" and p["guidance"] == 7.5 and p["class_ids"] == [207, 233, 472, 898]
    assert (out / "benchmark_plot.png").read_bytes()[:4] == b"\x89PNG"


def test_the_text_command_reads_a_prompt_dataset_url_into_its_cache(folders, tmp_path):
    src = tmp_path / "served"  # a file:// URL without a suffix: --prompt-dataset-format says jsonl
    src.write_text("\n".join(json.dumps({"id": i, "prompt": p}) for i, p in enumerate(PROMPTS)))
    argv = ["--model", folders / "pixart", "--conditioning", "text", "--prompt-dataset-url", src.as_uri(),
            "--prompt-dataset-format", "jsonl", "--prompt-dataset-field", "prompt", "--num-prompts", "3",
            "--prompt-dataset-cache-dir", tmp_path / "cache", "--steps", "3", "--repeats", "1", "--warmup", "0",
            "--no-clip", "--quiet", "--output-dir", tmp_path / "out"]
    r = read_result(benchmark.main([str(a) for a in argv]))["result"]
    assert r["conditions"] == PROMPTS[:3]
    assert [p.suffix for p in (tmp_path / "cache").iterdir()] == [".jsonl"]
    src.write_text(json.dumps({"prompt": "a new prompt"}))
    again = read_result(benchmark.main([str(a) for a in argv]))["result"]
    assert again["conditions"] == PROMPTS[:3]  # cached
    fresh = read_result(benchmark.main([str(a) for a in argv + ["--prompt-dataset-refresh"]]))["result"]
    assert fresh["conditions"] == ["a new prompt"] * 3


@pytest.mark.parametrize("model,args,message", [
    (None, [], "give --model: a hub id such as facebook/DiT-XL-2-256 or PixArt-alpha/PixArt-Sigma-XL-2-512-MS"),
    ("pixart", ["--conditioning", "class"], "is text-conditioned (PixArtSigmaPipeline), not --conditioning class: "
                                            "type --conditioning text with prompts"),
    ("dit", ["--conditioning", "text"], "is class-conditional (DiTPipeline), not --conditioning text: type "
                                        "--conditioning class with --class-ids"),
    ("dit", ["--class-ids", "207,cat"], "--class-ids takes integers separated by commas (e.g. --class-ids "
                                        "207,233,472); got 'cat' in '207,cat'"),
    ("dit", ["--class-ids", "207,1000"], "class ids [1000] are out of range for this model's 1000 classes: give ids "
                                         "from 0 to 999"),
    ("dit", ["--conditioning", "text", "--class-ids", "3"], "--conditioning text takes prompts, not --class-ids"),
    ("dit", ["--prompt-dataset-format", "jsonl"], "--prompt-dataset-format apply to --prompt-dataset-url"),
    ("dit", ["--dtype", "fp8"], "argument --dtype: invalid choice: 'fp8'"),
])
def test_scaffold_flags_are_refused_in_one_sentence(folders, tmp_path, capsys, model, args, message):
    argv = (["--model", folders / model] if model else []) + args + ["--output-dir", tmp_path, "--steps", "2",
                                                                     "--no-clip", "--quiet"]
    err = cli_error(capsys, argv)
    assert message in err, err
    assert not (tmp_path / "benchmark_results.json").exists()


def test_the_text_command_without_a_model_takes_pixart(tmp_path, capsys, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    err = cli_error(capsys, ["--conditioning", "text", "--output-dir", tmp_path, "--no-clip", "--quiet"])
    assert "PixArt-alpha/PixArt-Sigma-XL-2-512-MS" in err and "offline" in err, err


def _sweep_script():
    spec = importlib.util.spec_from_file_location("dummy_benchmark_sweep", REPO / "scripts" /
                                                  "dummy_benchmark_sweep.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_the_sweep_runs_on_the_embedded_model(tmp_path):
    data, plot = tmp_path / "dummy_benchmark_sweep.json", tmp_path / "dummy_benchmark_sweep.png"
    _sweep_script().main(["--thresholds", "3.0,4.0", "--reuse-limits", "2,6", "--dqar-max-gap", "6", "--runs", "2",
                          "--steps", "8", "--labels", "0,1", "--data-path", str(data), "--plot-path", str(plot),
                          "--quiet"])
    res = read_result(data)
    recs = res["result"]["records"]
    assert [(r["threshold"], r["max_reuse"], r["scenario"]) for r in recs] == [
        (h, lim, s) for h in (3.0, 4.0) for lim in (2, 6) for s in ("baseline", "static", "dqar")]
    for r in recs:
        assert r["avg_time_s"] > 0 and r["std_time_s"] >= 0 and r["avg_rss_mb"] > 0 and len(r["times_s"]) == 2
    dq = {(r["threshold"], r["max_reuse"]): r for r in recs if r["scenario"] == "dqar"}
    assert dq[(3.0, 2)]["tau"] == pytest.approx(3.0 / math.log(64)) and dq[(4.0, 6)]["cap"] == 5
    assert dq[(4.0, 2)]["avg_reuse"] > dq[(3.0, 2)]["avg_reuse"]  # a looser gate reuses more
    assert {r["avg_reuse"] for r in recs if r["scenario"] == "baseline"} == {0}
    assert {r["avg_reuse"] > 0 for r in recs if r["scenario"] == "static"} == {True}
    assert res["manifest"]["params"]["thresholds"] == [3.0, 4.0]
    assert plot.read_bytes()[:4] == b"\x89PNG"


def test_the_scaffold_sweep_threshold_above_log_n_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        _sweep_script().main(["--thresholds", "1.5,3.0,5.0", "--reuse-limits", "2,4,6", "--dqar-max-gap", "6",
                              "--runs", "5", "--data-path", str(tmp_path / "d.json"), "--quiet"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "entropy threshold 5 nats is outside [0, log N] = [0, 4.16]" in err and "--thresholds 1.5,3.0,4.0" in err
    assert not (tmp_path / "d.json").exists()
