"""Sampling spread over processes with torchrun (one a GPU), as DiT's DDP sampler does; gloo on CPU.

    torchrun --nproc_per_node=2 -m dqar_lib.evaluation.distributed --model tiny --num-images 8 --steps 4 --out /tmp/x

(`--num-images`, not `--n`: torchrun's own parser takes `--n` for an abbreviation of its `--nnodes`.)

The labels are cut into batches of `batch_size` on a grid fixed by the global index: batch k holds items
[k*B, (k+1)*B) and draws its noise from `batch_seed(seed, k*B)`. Each rank samples a contiguous run of whole
batches. By default B = ceil(N / world), so every rank gets a share of the images; give `batch_size` to fix the
grid, and an image is then the same whatever the world size. Rank 0 gathers everything and writes
`samples.pt` (images, latents, labels), `images/image_NNN.png` (where there are images) and `samples.json`
(manifest, with each rank's seconds and image count) into `out_dir`.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from ..artifacts import run_commit, write_result
from ..method.files import atomic_write
from ..models.sampling import SampleResult, sample

SAMPLES, MANIFEST = "samples.pt", "samples.json"


def shard(n_items: int, rank: int, world: int) -> range:
    """The contiguous part of range(n_items) that `rank` of `world` takes; sizes differ by at most one."""
    if not isinstance(world, int) or world < 1:
        raise ValueError(f"world must be an integer >= 1, got {world!r}")
    if not isinstance(rank, int) or not 0 <= rank < world:
        raise ValueError(f"rank must be an integer in [0, {world}), got {rank!r}")
    if not isinstance(n_items, int) or n_items < 0:
        raise ValueError(f"n_items must be an integer >= 0, got {n_items!r}")
    base, extra = divmod(n_items, world)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (rank < extra))


def batch_seed(seed: int, start: int) -> int:
    """Noise seed of the batch whose first item has global index `start` (distinct for every (seed, start))."""
    return int(np.random.SeedSequence([seed, start]).generate_state(1, np.uint64)[0])


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    try:
        return default if value is None else int(value)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an integer, got {value!r}") from None


def distributed_sample(model: torch.nn.Module, labels, out_dir: str | Path, batch_size: int | None = None,
                       seed: int = 0, **sample_kwargs) -> Path | None:
    """Sample one image per label over RANK/WORLD_SIZE processes; rank 0 writes the gathered result.

    Reads RANK, WORLD_SIZE and LOCAL_RANK from the environment (torchrun sets them; world 1 when absent) and
    joins torch.distributed (nccl on CUDA, gloo otherwise) unless already joined. Each batch is
    `sample(model, labels[start:start + batch_size], seed=batch_seed(seed, start), **sample_kwargs)`.
    Returns the path of samples.pt on rank 0, None on the others.
    """
    labels = torch.as_tensor(labels, dtype=torch.long).reshape(-1)
    if labels.numel() == 0:
        raise ValueError("labels must hold at least one class label, got none")
    if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"batch_size must be None or an integer >= 1, got {batch_size!r}")
    rank, world, local = _env_int("RANK", 0), _env_int("WORLD_SIZE", 1), _env_int("LOCAL_RANK", 0)
    shard(0, rank, world)  # validates rank and world
    if batch_size is None:  # one batch a rank: every rank works
        batch_size = -(-labels.numel() // world)
    cuda = torch.cuda.is_available()
    joined = False
    if world > 1 and not dist.is_initialized():
        if cuda:
            torch.cuda.set_device(local)
        dist.init_process_group("nccl" if cuda else "gloo")
        joined = True
    try:
        if cuda:
            model = model.to(f"cuda:{local}")
        sample_kwargs.setdefault("progress", False)
        n = labels.numel()
        starts = list(range(0, n, batch_size))  # the batch grid: fixed by n and batch_size only
        mine = [starts[k] for k in shard(len(starts), rank, world)]
        t0 = time.perf_counter()
        parts = []
        for start in mine:
            res = sample(model, labels[start:start + batch_size], seed=batch_seed(seed, start), **sample_kwargs)
            parts.append(dict(start=start, images=res.images, latents=res.latents,
                              reuse_fraction=res.stats.get("reuse_fraction")))
        mine_out = dict(rank=rank, parts=parts, seconds=time.perf_counter() - t0,
                        images=sum(len(p["latents"]) for p in parts))
        gathered = [None] * world if rank == 0 else None
        if world > 1:
            dist.gather_object(mine_out, gathered, dst=0)
        else:
            gathered = [mine_out]
        if rank != 0:
            return None
        plain = {k: v if isinstance(v, (int, float, str, type(None))) else repr(v) for k, v in sample_kwargs.items()}
        params = dict(batch_size=batch_size, seed=seed, world_size=world, **plain)
        return _write(Path(out_dir), labels, gathered, params)
    finally:
        if joined:
            dist.destroy_process_group()


def _write(out_dir: Path, labels: torch.Tensor, gathered: list[dict], params: dict) -> Path:
    parts = sorted((p for g in gathered for p in g["parts"]), key=lambda p: p["start"])
    latents = torch.cat([p["latents"] for p in parts])  # (N, C, H, W)
    images = None if parts[0]["images"] is None else torch.cat([p["images"] for p in parts])  # (N, 3, H, W)
    if len(latents) != len(labels):
        raise RuntimeError(f"gathered {len(latents)} samples for {len(labels)} labels")
    path = out_dir / SAMPLES
    with atomic_write(path, "wb") as f:
        torch.save(dict(images=images, latents=latents, labels=labels), f)
    pngs = SampleResult(images, latents, None).save(out_dir / "images") if images is not None else []
    reuse = [p["reuse_fraction"] for p in parts if p["reuse_fraction"] is not None]
    write_result(out_dir / MANIFEST, dict(
        file=SAMPLES, n=len(labels), batches=len(parts),
        rank_seconds={g["rank"]: g["seconds"] for g in gathered},
        rank_images={g["rank"]: g["images"] for g in gathered}, images_dir="images" if pngs else None,
        mean_reuse_fraction=sum(reuse) / len(reuse) if reuse else None,
    ), params)
    return path


def main(argv: list[str] | None = None) -> Path | None:
    """Command line:
    `torchrun --nproc_per_node=K -m dqar_lib.evaluation.distributed --model tiny --num-images 8 --out DIR`."""
    ap = argparse.ArgumentParser(prog="python -m dqar_lib.evaluation.distributed", description=main.__doc__)
    ap.add_argument("--model", default=None, help='"tiny" (dqar_lib.tiny_dit()), a model path, or the default')
    ap.add_argument("--num-images", type=int, default=8, help="images; labels cycle through the classes")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=None,
                    help="images per batch (default: ceil(N / ranks), one batch a rank)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--scheduler", default="ddim")
    ap.add_argument("--guidance", type=float, default=None)
    ap.add_argument("--dqar", default=None, help="a DQAR preset name; none: full compute")
    ap.add_argument("--out", required=True, help="output folder for samples.pt and samples.json")
    a = ap.parse_args(argv)
    run_commit()  # the run starts: its results name this commit
    from ..models.zoo import load_model, tiny_dit

    model = tiny_dit() if a.model == "tiny" else load_model(a.model)
    if a.num_images < 1:
        ap.error(f"--num-images must be >= 1, got {a.num_images}")
    labels = torch.arange(a.num_images) % model.config.num_embeds_ada_norm
    return distributed_sample(model, labels, a.out, batch_size=a.batch_size, seed=a.seed, num_steps=a.steps,
                              scheduler=a.scheduler, guidance_scale=a.guidance, dqar=a.dqar)


if __name__ == "__main__":
    main()
