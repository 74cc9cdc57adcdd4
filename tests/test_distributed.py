import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from dqar_lib import sample
from dqar_lib.evaluation.distributed import MANIFEST, SAMPLES, batch_seed, distributed_sample, shard

REPO = Path(__file__).resolve().parent.parent
DIST_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@pytest.mark.parametrize("n,world", [(10, 3), (3, 4), (0, 2), (8, 1), (7, 7)])
def test_shards_are_contiguous_balanced_and_cover_everything(n, world):
    parts = [shard(n, r, world) for r in range(world)]
    assert [i for p in parts for i in p] == list(range(n))
    assert max(map(len, parts)) - min(map(len, parts)) <= 1
    assert parts[0].step == 1


def test_shard_known_split():
    assert [shard(10, r, 3) for r in range(3)] == [range(0, 4), range(4, 7), range(7, 10)]


@pytest.mark.parametrize("args,message", [
    ((4, 2, 2), r"rank must be an integer in \[0, 2\), got 2"),
    ((4, -1, 2), r"rank must be an integer in \[0, 2\), got -1"),
    ((4, 0, 0), "world must be an integer >= 1, got 0"),
    ((-1, 0, 1), "n_items must be an integer >= 0, got -1"),
])
def test_shard_bad_arguments(args, message):
    with pytest.raises(ValueError, match=message):
        shard(*args)


def test_batch_seeds_are_distinct_and_fixed():
    seeds = {batch_seed(s, start) for s in range(4) for start in range(0, 64, 8)}
    assert len(seeds) == 32  # no (seed, start) pair collides, unlike seed + start
    assert batch_seed(3, 16) == batch_seed(3, 16)


def _clean_env(monkeypatch):
    for name in DIST_ENV:
        monkeypatch.delenv(name, raising=False)


def test_world_one_writes_batches_on_the_global_grid(dit, tmp_path, monkeypatch):
    _clean_env(monkeypatch)
    labels = torch.tensor([3, 1, 4, 1, 5])
    path = distributed_sample(dit, labels, tmp_path, batch_size=2, seed=5, num_steps=2)
    saved = torch.load(path)
    assert path == tmp_path / SAMPLES and torch.equal(saved["labels"], labels)
    assert saved["images"].shape == (5, 3, 8, 8) and saved["latents"].shape == (5, 3, 8, 8)
    for start in (0, 2, 4):  # batch k is sample() of its labels with the seed of its global start index
        ref = sample(dit, labels[start:start + 2], num_steps=2, seed=batch_seed(5, start), progress=False)
        assert torch.equal(saved["images"][start:start + 2], ref.images)
    result = json.loads((tmp_path / MANIFEST).read_text())
    assert result["result"]["n"] == 5 and result["result"]["batches"] == 3
    assert result["manifest"]["params"]["world_size"] == 1 and result["manifest"]["params"]["num_steps"] == 2


@pytest.mark.parametrize("env,kwargs,message", [
    ({}, dict(batch_size=0), "batch_size must be None or an integer >= 1, got 0"),
    ({}, dict(labels=[]), "labels must hold at least one class label"),
    ({"RANK": "x"}, {}, "environment variable RANK must be an integer, got 'x'"),
    ({"RANK": "2", "WORLD_SIZE": "2"}, {}, r"rank must be an integer in \[0, 2\), got 2"),
])
def test_distributed_sample_bad_arguments(dit, tmp_path, monkeypatch, env, kwargs, message):
    _clean_env(monkeypatch)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    args = dict(labels=[0, 1], batch_size=1) | kwargs
    with pytest.raises(ValueError, match=message):
        distributed_sample(dit, args.pop("labels"), tmp_path, num_steps=1, **args)
    assert not (tmp_path / SAMPLES).exists()


def _run(cmd: list[str]) -> None:
    env = {k: v for k, v in os.environ.items() if k not in DIST_ENV}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"


def test_torchrun_two_ranks_equal_one_process(tmp_path):
    """Two gloo ranks (uneven: 2 batches and 1) gather the same images as a single process."""
    args = ["-m", "dqar_lib.distributed", "--model", "tiny", "--num-images", "6", "--steps", "3",
            "--batch-size", "2", "--seed", "11", "--dqar", "always"]
    _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *args,
          "--out", str(tmp_path / "two")])
    _run([sys.executable, *args, "--out", str(tmp_path / "one")])
    two, one = (torch.load(tmp_path / d / SAMPLES) for d in ("two", "one"))
    assert torch.equal(two["labels"], torch.arange(6)) and two["images"].shape == (6, 3, 8, 8)
    assert torch.equal(two["images"], one["images"]) and torch.equal(two["latents"], one["latents"])
    assert not torch.equal(two["latents"][0], two["latents"][2])  # batches draw different noise
    manifest = json.loads((tmp_path / "two" / MANIFEST).read_text())
    assert manifest["manifest"]["params"]["world_size"] == 2 and manifest["manifest"]["params"]["dqar"] == "always"
    assert sorted(manifest["result"]["rank_seconds"]) == ["0", "1"]
    assert manifest["result"]["mean_reuse_fraction"] == pytest.approx(2 / 3)  # "always": 2 of 3 steps reuse


def test_torchrun_default_splits_the_images_over_the_ranks(tmp_path):
    """Without --batch-size each rank samples its share (one batch a rank), and PNGs land beside samples.pt."""
    _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
          "dqar_lib.distributed", "--model", "tiny", "--num-images", "5", "--steps", "2",
          "--out", str(tmp_path)])
    result = json.loads((tmp_path / MANIFEST).read_text())["result"]
    assert result["rank_images"] == {"0": 3, "1": 2} and result["batches"] == 2
    assert all(s > 0 for s in result["rank_seconds"].values()) and sorted(result["rank_seconds"]) == ["0", "1"]
    saved = torch.load(tmp_path / SAMPLES)
    pngs = sorted((tmp_path / result["images_dir"]).glob("*.png"))
    assert [p.name for p in pngs] == [f"image_{i:03d}.png" for i in range(5)]
    from PIL import Image

    first = torch.from_numpy(np.asarray(Image.open(pngs[0]))).permute(2, 0, 1).float() / 255  # (3, H, W)
    assert torch.allclose(first, saved["images"][0], atol=1 / 255)


def test_the_command_is_the_top_level_module():
    """`torchrun ... -m dqar_lib.distributed` (the name the README gives) is the command; the library module that
    does the work (`dqar_lib.evaluation.distributed`) has no second one."""
    import dqar_lib.evaluation.distributed as lib

    out = subprocess.run([sys.executable, "-m", "dqar_lib.distributed", "--help"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0 and "--num-images" in out.stdout, out.stderr
    assert not hasattr(lib, "main")
