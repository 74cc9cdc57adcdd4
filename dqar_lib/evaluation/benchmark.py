"""The pipeline benchmark behind `python -m dqar_lib.benchmark`: full compute, DQAR and peers on one pipeline.

    rows = run_benchmark(pipe, cond, {"full": None, "dqar": cfg}, out_dir, num_steps=20, on_row=write)

Methods run back to back (each: `warmup` untimed, then `repeats` timed samplings of the whole batch, one
`time_method` call each) on the same seed and conditions, the first method (full compute) first: it is the
reference of every speedup, PSNR and SSIM. After each method its images are decoded through the pipeline's VAE
and written as PNGs, and `on_row(rows so far)` runs, so an interrupted run leaves what it measured.
`sweep_configs` builds the grid of the `--sweep` mode (gate threshold x reuse cap).
"""

from __future__ import annotations

import re
import resource
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..method.config import DQARConfig
from ..models.pipelines import Conditions, decode
from .bench import compiled_blocks, method_fields, summary, time_method
from .methods import as_method
from .metrics import psnr, ssim


def slug(name: str) -> str:
    """A method name as a folder name: `dqar, tau=0.9` -> `dqar_tau-0.9`."""
    return re.sub(r"[^A-Za-z0-9.+-]+", "_", name.replace("=", "-")).strip("_") or "method"


def peak_memory(dev: torch.device) -> tuple[int, str]:
    """(bytes, what): CUDA's peak allocation since the last reset, else the process's peak resident set (it never
    goes down, so on CPU it bounds every method run so far, not this one alone)."""
    if dev.type == "cuda":
        return int(torch.cuda.max_memory_allocated(dev)), "torch.cuda.max_memory_allocated"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024), "process peak RSS (monotone over the run)"


def run_benchmark(pipe, cond: Conditions, methods: dict, out_dir: str | Path, num_steps: int = 20,
                  scheduler: str = "ddim", guidance_scale: float = 4.0, seed: int = 0, repeats: int = 3,
                  warmup: int = 1, compile: bool = False, compile_options: dict | None = None,
                  scorer: Callable | None = None, on_row: Callable[[list[dict]], None] | None = None,
                  progress: bool = True) -> list[dict]:
    """One row per method (anything `as_method` takes; the first is the reference, normally None = full compute).

    A row: times of the whole batch (median, min, max, IQR, all repeats), ms per image and per step, speedup,
    reuse fraction (DQAR's controller; peers: their skipped attention calls), peak memory, PSNR / SSIM against
    the reference's images, `scorer(images, names)` (CLIP score; None when not given), the PNG folder.
    """
    if not methods:
        raise ValueError("run_benchmark needs at least one method")
    if not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be an integer >= 1, got {repeats!r}")
    methods = {name: as_method(m) for name, m in methods.items()}
    model, out_dir, n = pipe.transformer, Path(out_dir), len(cond)
    dev = next(model.parameters()).device
    kwargs = dict(num_steps=num_steps, guidance_scale=float(guidance_scale), seed=seed, scheduler=scheduler,
                  **cond.sample_kwargs())
    labels = kwargs.pop("class_labels", None)
    rows, ref = [], None
    with compiled_blocks(model, compile, compile_options) as (blocks, compiled):  # as bench_sampling
        for name, method in tqdm(methods.items(), desc="methods", disable=not progress):
            if method is not None:
                method.prepare(model, labels, **kwargs)
            if dev.type == "cuda":
                torch.cuda.reset_peak_memory_stats(dev)
            times = []
            for r in tqdm(range(warmup + repeats), desc=name, leave=False, disable=not progress):
                ms, res = time_method(model, method, labels, dict(kwargs, progress=False), dev, blocks, compiled,
                                      compile_options)
                if r >= warmup:
                    times.append(ms)
            res.images = decode(pipe, res.latents)  # (N, 3, H, W) in [0, 1]
            folder = out_dir / "images" / slug(name)
            res.save(folder)
            ref = ref or (name, res, summary(times)["median_ms"])
            rows.append(benchmark_row(name, method, res, ref, times, n, num_steps, dev, folder.relative_to(out_dir),
                             scorer, cond.names))
            if on_row is not None:
                on_row(rows)
    return rows


def benchmark_row(name, method, res, ref, times, n, num_steps, dev, folder, scorer, names) -> dict:
    """A method's row: its timing summary, per-image / per-step times, speedup and PSNR / SSIM against `ref`
    (name, result, median ms), reuse, memory, `scorer`'s score of its images and their folder."""
    s = summary(times)
    ref_name, ref_res, ref_ms = ref
    peak, peak_kind = peak_memory(dev)
    score = scorer(res.images, names) if scorer is not None else None
    return dict(
        method=name, reference=ref_name, config=method_fields(method), images=n, steps=num_steps, **s,
        ms_per_image=s["median_ms"] / n, ms_per_step=s["median_ms"] / num_steps, speedup=ref_ms / s["median_ms"],
        reuse_fraction=res.stats.get("reuse_fraction", 0.0), peak_memory_bytes=peak, peak_memory_kind=peak_kind,
        peak_cache_bytes=res.stats.get("peak_cache_bytes", 0),
        psnr=psnr(res.images, ref_res.images), ssim=ssim(res.images, ref_res.images), clip_score=score,
        image_dir=str(folder),
    )


def sweep_configs(base: DQARConfig, taus: list[float], streaks: list[int]) -> dict[str, DQARConfig]:
    """`base` at every (tau, max_reuse_streak) pair, named `tau=..., cap=...` (each validated by DQARConfig)."""
    out = {}
    for tau in taus:
        for cap in streaks:
            out[f"tau={tau:g}, cap={cap}"] = base.replace(tau=float(tau), max_reuse_streak=int(cap))
    return out
