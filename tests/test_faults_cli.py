"""The command lines, pinned from outside (issue 35): every path of `python -m dqar_lib.benchmark` (a preset, a saved
calibration, a fit made now, a sweep, a pipeline run through pipe(...)) applies the `--set` overrides, read from what
the run did (`--set end_computes=100` makes every step one of the last that compute, so every DQAR row is full
compute's images, where without it they reuse); and a
`fid_seeds` run is resumed only from a file made with the same samples, steps and chunk, and refused otherwise."""

from contextlib import nullcontext

import pytest
import torch

from dqar_lib import DQARConfig, benchmark, save_calibration
from dqar_lib.artifacts import read_result
from dqar_lib.evaluation import fid_seeds
from dqar_lib.models.pipelines import tiny_dit_pipeline
from dqar_lib.models.tiny_pipelines import tiny_pipeline

FAST = ["--steps", "6", "--repeats", "1", "--warmup", "0", "--no-clip", "--quiet", "--num-prompts", "2"]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A tiny DiT pipeline (dqar_lib's own loop), a tiny Flux pipeline and its embeddings (run through pipe(...)),
    and a saved calibration of the gates that reuses on the DiT."""
    root = tmp_path_factory.mktemp("cli")
    tiny_dit_pipeline().save_pretrained(root / "dit")
    tiny_dit_pipeline().save_pretrained(root / "dit_fit")  # --calibrate writes its fit into the model's folder
    pipe, kwargs = tiny_pipeline("FluxPipeline")
    pipe.save_pretrained(root / "flux")
    torch.save({k: torch.cat([v, v.flip(-1)]) for k, v in kwargs.items() if torch.is_tensor(v)}, root / "flux.pt")
    save_calibration(DQARConfig.preset("gates", tau=1.0, snr_lo=0.0), root / "calibration")
    return root, kwargs["height"]


PATHS = {  # each CLI path: the arguments that choose it
    "preset": lambda root, size: ["--model", root / "dit"],
    "preset gates": lambda root, size: ["--model", root / "dit", "--preset", "gates", "--set", "tau=1.0", "--set",
                                        "snr_lo=0"],
    "calibration": lambda root, size: ["--model", root / "dit", "--calibration", root / "calibration"],
    "calibrate": lambda root, size: ["--model", root / "dit_fit", "--calibrate", "--budget", "0.5"],
    "sweep": lambda root, size: ["--model", root / "dit", "--sweep", "--sweep-tau", "1.0", "--sweep-streak", "2",
                                 "--set", "snr_lo=0"],
    "pipe(...)": lambda root, size: ["--model", root / "flux", "--embeds", root / "flux.pt", "--height", size,
                                     "--width", size],
    "pipe(...) sweep": lambda root, size: ["--model", root / "flux", "--embeds", root / "flux.pt", "--height", size,
                                           "--width", size, "--sweep", "--sweep-tau", "1.0", "--sweep-streak", "2"],
}


def dqar_rows(argv, out) -> list[dict]:
    """The rows of every DQAR method a run wrote (full compute's left out)."""
    path = benchmark.main([str(a) for a in argv] + ["--output-dir", str(out), *FAST])
    rows = read_result(path)["result"]["rows"]
    assert rows[0]["method"] == "full" and len(rows) >= 2
    return rows[1:]


@pytest.mark.parametrize("path", list(PATHS))
def test_every_cli_path_applies_the_set_overrides(saved, tmp_path, path, fresh_reuse_warnings):
    root, size = saved
    argv = PATHS[path](root, size)
    on = dqar_rows(argv, tmp_path / "on")
    assert all(r["reuse_fraction"] > 0 and r["psnr"] < float("inf") for r in on), \
        f"{path}: the run reuses nothing without --set, so --set end_computes=100 could not be told apart"
    # dqar_lib's own loop says that DQAR reused nothing (pipe(...) runs do not go through sample)
    with pytest.warns(RuntimeWarning, match="DQAR reused nothing") if not path.startswith("pipe") else nullcontext():
        off = dqar_rows(argv + ["--set", "end_computes=100"], tmp_path / "off")
        assert [r["reuse_fraction"] for r in off] == [0.0] * len(off), f"{path}: --set end_computes=100 was not applied"
    assert all(r["psnr"] == float("inf") for r in off)  # full compute's images, bit for bit


def _fake_quality(calls):
    def quality(model, method, reference, steps, scheduler, per_class, seed, classifier, chunk):
        calls.append((seed, chunk))
        return dict(class_accuracy=0.5, proxy_fid=float(seed + chunk), quality_n=10 * per_class)
    return quality


@pytest.fixture
def fake_fid(monkeypatch):
    calls = []
    monkeypatch.setattr(fid_seeds, "distribution_quality", _fake_quality(calls))
    monkeypatch.setattr("dqar_lib.models.data.load_cifar10", lambda split: (torch.zeros(2, 4, 4, 3).byte().numpy(),
                                                                             None))
    monkeypatch.setattr("dqar_lib.evaluation.classifier.load_classifier", lambda: object())
    return calls


@pytest.mark.parametrize("other", [["--chunk", "50"], ["--per-class", "2"], ["--steps", "20"]])
def test_fid_seeds_refuses_to_resume_a_run_made_with_other_parameters(fake_fid, tmp_path, capsys, other):
    """Rows sampled with another chunk (other noise), sample count or step count are another run's: resuming would
    mix them into one table; the run is refused in one sentence and the file is left as it was."""
    out = tmp_path / "q.json"
    argv = ["--entries", "full", "--per-class", "1", "--seeds", "3", "--chunk", "100", "--out", str(out), "--quiet"]
    fid_seeds.main(argv)
    before = out.read_bytes()
    flag = other[0]
    again = [a for k, a in enumerate(argv) if a != flag and (k == 0 or argv[k - 1] != flag)] + other + ["--seeds", "4"]
    with pytest.raises(SystemExit):
        fid_seeds.main(again)
    err = capsys.readouterr().err
    assert f"made with {flag} " in err and "--restart" in err, err
    assert out.read_bytes() == before and len(fake_fid) == 1
    fid_seeds.main(again + ["--restart"])  # asked to: the old rows are replaced
    rows = read_result(out)["result"]["rows"]
    assert [r["seed"] for r in rows] == [4] and len(fake_fid) == 2


def test_fid_seeds_resumes_the_same_run(fake_fid, tmp_path):
    out = tmp_path / "q.json"
    argv = ["--entries", "full", "--per-class", "1", "--chunk", "50", "--out", str(out), "--quiet"]
    fid_seeds.main(argv + ["--seeds", "3"])
    fid_seeds.main(argv + ["--seeds", "3", "4"])  # one more seed: only its row is sampled
    assert fake_fid == [(3, 50), (4, 50)] and [r["seed"] for r in read_result(out)["result"]["rows"]] == [3, 4]


def test_fid_seeds_resumed_on_fewer_entries_keeps_the_others(fake_fid, tmp_path):
    """Nothing is lost when a file is resumed for part of what it holds: the rows of the other entries and seeds stay,
    and its manifest names them all."""
    out = tmp_path / "q.json"
    argv = ["--per-class", "1", "--chunk", "50", "--out", str(out), "--quiet"]
    fid_seeds.main(argv + ["--entries", "full", "DDIM-20", "--seeds", "3", "4"])
    fid_seeds.main(argv + ["--entries", "full", "--seeds", "3"])  # all done already: nothing is sampled
    res = read_result(out)
    assert sorted((r["entry"], r["seed"]) for r in res["result"]["rows"]) == [("DDIM-20", 3), ("DDIM-20", 4),
                                                                             ("full", 3), ("full", 4)]
    assert res["manifest"]["params"]["entries"] == ["full", "DDIM-20"] and res["manifest"]["params"]["seeds"] == [3, 4]
    assert len(fake_fid) == 4 and res["result"]["complete"]
