"""Timing methods on a diffusers pipeline (the backend of `python -m dqar_lib.benchmark`), by the rules of `timing`.

    rows = run_benchmark(pipe, cond, {"full": None, "dqar": cfg}, out_dir, num_steps=20, on_row=write)
    call = pipeline_call(pipe, n=4, embeds=torch.load("embeds.pt"))      # or prompts=[...] with text encoders
    rows = run_pipeline_benchmark(pipe, call, {"full": None, "dqar": "dqar"}, out_dir, num_steps=28, on_row=write)

Two ways to drive a pipeline, one row (`benchmark_row`) for both. DiT- and PixArt-style pipelines run their
transformer in dqar_lib's own sampling loop (`run_benchmark`: full compute, DQAR and peers). Methods run back to
back (each: `warmup` untimed, then `repeats` timed samplings of the whole batch, one `timing.time_method` call
each) on the same seed and conditions, the first method (full compute) first: it is the reference of every
speedup, PSNR and SSIM. After each method its images are decoded through the pipeline's VAE and written as PNGs,
and `on_row(rows so far)` runs, so an interrupted run leaves what it measured.

Pipelines dqar_lib's loop does not condition (SD3, Flux, ...) run their own `pipe(...)` (`run_pipeline_benchmark`)
under `dqar_lib.dqar(pipe, config)` (full compute: nothing attached) on the same seed, the pipeline's own
scheduler and guidance. Its first untimed run (a warm-up) returns images (`output_type="pt"`), written as PNGs and
compared with full compute's; the timed runs return latents (`output_type="latent"`), so the VAE decode stays out
of the timing. With prompts given as text, encoding them is inside every timed run (the same work for every
method); pre-encoded embeddings (`embeds`) keep it out. `sweep_configs` builds the grid of the `--sweep` mode
(gate threshold x reuse cap).
"""

from __future__ import annotations

import contextlib
import inspect
import re
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..method.config import DQARConfig
from ..method.hooks import dqar
from ..models.pipelines import Conditions, decode
from ..models.sampling import SampleResult
from .methods import DQARMethod, as_method, method_fields
from .metrics import psnr, ssim
from .timing import check_counts, compiled_blocks, peak_memory, summary, time_method, time_once

TEXT_ENCODERS = ("text_encoder", "text_encoder_2", "text_encoder_3")
SET_BY_BENCHMARK = ("output_type", "generator", "num_inference_steps", "guidance_scale")


def slug(name: str) -> str:
    """A method name as a folder name: `dqar, tau=0.9` -> `dqar_tau-0.9`."""
    return re.sub(r"[^A-Za-z0-9.+-]+", "_", name.replace("=", "-")).strip("_") or "method"


def image_folder(name: str, folders: dict[str, str] | None = None) -> str:
    """Where a method's PNGs go under the output folder: `folders[name]` if given, else `images/<slug of name>`."""
    return (folders or {}).get(name) or f"images/{slug(name)}"


def run_benchmark(pipe, cond: Conditions, methods: dict, out_dir: str | Path, num_steps: int = 20,
                  scheduler: str = "ddim", guidance_scale: float = 4.0, seed: int = 0, repeats: int = 3,
                  warmup: int = 1, compile: bool = False, compile_options: dict | None = None,
                  scorer: Callable | None = None, on_row: Callable[[list[dict]], None] | None = None,
                  progress: bool = True, folders: dict[str, str] | None = None) -> list[dict]:
    """One row per method (anything `as_method` takes; the first is the reference, normally None = full compute).

    A row: times of the whole batch (median, min, max, IQR, all repeats), ms per image and per step, speedup,
    reuse fraction (DQAR's controller; peers: their skipped attention calls), peak memory, PSNR / SSIM against
    the reference's images, `scorer(images, names)` (CLIP score; None when not given), the PNG folder:
    `folders[name]` under `out_dir` (default `images/<slug of name>`).
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
            folder = out_dir / image_folder(name, folders)
            res.save(folder)
            ref = ref or (name, res, summary(times)["median_ms"])
            rows.append(benchmark_row(name, method, res, ref, times, n, num_steps, dev, folder.relative_to(out_dir),
                             scorer, cond.names))
            if on_row is not None:
                on_row(rows)
    return rows


def benchmark_row(name, method, res, ref, times, n, num_steps, dev, folder, scorer, names) -> dict:
    """A method's row: its timing summary (median, spread, mean and sample standard deviation of the batch's time
    over the repeats), per-image / per-step times, speedup and PSNR / SSIM against `ref`
    (name, result, median ms), reuse, memory, `scorer`'s score of its images and their folder."""
    s = summary(times)
    ref_name, ref_res, ref_ms = ref
    peak, peak_kind = peak_memory(dev)
    score = scorer(res.images, names) if scorer is not None else None
    return dict(
        method=name, reference=ref_name, config=method_fields(method), images=n, steps=num_steps, **s,
        mean_ms=statistics.fmean(times), std_ms=statistics.stdev(times) if len(times) > 1 else 0.0,
        ms_per_image=s["median_ms"] / n, ms_per_step=s["median_ms"] / num_steps, speedup=ref_ms / s["median_ms"],
        reuse_fraction=res.stats.get("reuse_fraction", 0.0), peak_memory_bytes=peak, peak_memory_kind=peak_kind,
        peak_cache_bytes=res.stats.get("peak_cache_bytes", 0),
        psnr=psnr(res.images, ref_res.images), ssim=ssim(res.images, ref_res.images), clip_score=score,
        image_dir=str(folder),
    )


@dataclass
class PipelineCall:
    """The conditioning arguments of one `pipe(...)` call over the whole batch, and what names each image."""

    names: list[str]
    kwargs: dict  # prompt=[...] or the pipeline's *_embeds / *_mask tensors, (N, ...) each
    encodes_prompts: bool  # text prompts: their encoding runs inside each timed call

    def __len__(self) -> int:
        return len(self.names)

    def to(self, device, dtype: torch.dtype) -> PipelineCall:
        """Moves its tensors to `device` in place (floating ones also to `dtype`); returns itself."""
        self.kwargs.update({k: v.to(device, dtype) if v.is_floating_point() else v.to(device)
                            for k, v in self.kwargs.items() if torch.is_tensor(v)})
        return self


def pipeline_call(pipe, n: int, prompts: list[str] | None = None, embeds: dict | None = None,
                  **call_kwargs) -> PipelineCall:
    """`n` images: prompts (cycled; the pipeline must have its text encoders) or pre-encoded `embeds`, a dict of
    `pipe(...)` arguments whose `*_embeds` / `*_mask` tensors share their first (prompt) dimension and are cycled to
    `n` rows. `call_kwargs` (height, width, ...) are added to every call."""
    name = type(pipe).__name__
    if n < 1:
        raise ValueError(f"the number of images must be >= 1, got {n}")
    if (prompts is None) == (embeds is None):
        raise ValueError(f"{name}: give prompts or pre-encoded embeds, exactly one of them")
    accepted = inspect.signature(type(pipe).__call__).parameters
    own = [k for k in (embeds or {}) | call_kwargs if k in SET_BY_BENCHMARK]
    if own:
        raise ValueError(f"{own} are set by the benchmark itself ({', '.join(SET_BY_BENCHMARK)}); leave them out")
    bad = [k for k in (embeds or {}) | call_kwargs if k not in accepted]
    if bad:
        raise ValueError(f"{name}(...) takes no {bad}; it takes {', '.join(k for k in accepted if k != 'self')}")
    if prompts is not None:
        if not prompts:
            raise ValueError(f"{name} needs at least one prompt, got none")
        if all(getattr(pipe, k, None) is None for k in TEXT_ENCODERS):
            raise ValueError(f"this {name} has no text encoder (saved without one), so it cannot encode prompts: "
                             "give pre-encoded embeddings (--embeds FILE)")
        names = [prompts[i % len(prompts)] for i in range(n)]
        return PipelineCall(names, dict(prompt=names, **call_kwargs), True)
    rows = {k: v for k, v in embeds.items() if k.endswith(("_embeds", "_mask"))}
    if not rows or not all(torch.is_tensor(v) for v in rows.values()):
        raise ValueError(f"embeds need tensors named *_embeds (e.g. prompt_embeds), got {sorted(embeds)}")
    B = {k: v.shape[0] for k, v in rows.items()}
    if len(set(B.values())) > 1:
        raise ValueError(f"embeds disagree on the number of prompts (first dimension): {B}")
    b = next(iter(B.values()))
    idx = [i % b for i in range(n)]
    kwargs = dict(embeds, **{k: v[idx] for k, v in rows.items()}, **call_kwargs)
    return PipelineCall([f"embedding {i}" for i in idx], kwargs, False)


def run_pipeline_benchmark(pipe, call: PipelineCall, methods: dict, out_dir: str | Path, num_steps: int = 28,
                           guidance_scale: float | None = None, seed: int = 0, repeats: int = 3, warmup: int = 1,
                           scorer: Callable | None = None, on_row: Callable[[list[dict]], None] | None = None,
                           progress: bool = True, folders: dict[str, str] | None = None) -> list[dict]:
    """One row per method (None, a DQAR preset name or a DQARConfig; the first is the reference) as `run_benchmark`
    gives (images in `folders[name]`, as there), from `max(warmup, 1)` untimed runs (the first returns the images)
    and `repeats` timed ones."""
    if not methods:
        raise ValueError("run_pipeline_benchmark needs at least one method")
    check_counts(warmup, repeats)
    methods = {name: as_method(m) for name, m in methods.items()}
    peers = [name for name, m in methods.items() if m is not None and not isinstance(m, DQARMethod)]
    if peers:
        raise ValueError(f"{type(pipe).__name__} runs through pipe(...), where only full compute and DQAR run; the "
                         f"peers {peers} are set up for dqar_lib's own DDPM-time loop (diffusers' own "
                         "`pipe.transformer.enable_cache(...)` applies them here)")
    out_dir, n = Path(out_dir), len(call)
    dev = next(pipe.transformer.parameters()).device
    base = dict(call.kwargs, num_inference_steps=num_steps)
    if guidance_scale is not None:
        base["guidance_scale"] = float(guidance_scale)

    def once(method, output_type):  # (ms of the pipe call alone, its images or latents, DQAR's stats)
        gen = torch.Generator("cpu").manual_seed(seed)
        with dqar(pipe, method.config) if method is not None else contextlib.nullcontext() as ctl:
            ms, out = time_once(lambda: pipe(**base, generator=gen, output_type=output_type).images, dev)
        return ms, out, (ctl.stats() if ctl is not None else {})

    rows, ref = [], None
    for name, method in tqdm(methods.items(), desc="methods", disable=not progress):
        untimed, times = max(warmup, 1), []
        for r in tqdm(range(untimed + repeats), desc=name, leave=False, disable=not progress):
            ms, out, stats = once(method, "pt" if r == 0 else "latent")
            if r == 0:
                images = out.float().cpu()  # (N, 3, H, W) in [0, 1]
            elif r >= untimed:
                times.append(ms)
        res = SampleResult(images, out, None, stats)
        folder = out_dir / image_folder(name, folders)
        res.save(folder)
        ref = ref or (name, res, summary(times)["median_ms"])
        row = benchmark_row(name, method, res, ref, times, n, num_steps, dev, folder.relative_to(out_dir), scorer,
                            call.names)
        row["timed"] = "pipe(...) to latents" + (", prompt encoding included" if call.encodes_prompts else "")
        rows.append(row)
        if on_row is not None:
            on_row(rows)
    return rows


def pipeline_guidance(pipe) -> float:
    """The default `guidance_scale` of the pipeline's `__call__` (4.0 where it has none)."""
    g = inspect.signature(type(pipe).__call__).parameters.get("guidance_scale")
    return float(g.default) if g is not None and isinstance(g.default, (int, float)) else 4.0


def load_embeds(path: Path) -> dict:
    """A torch.save'd dict of pre-encoded `pipe(...)` arguments (`--embeds`), loaded on the CPU."""
    if not path.is_file():
        raise FileNotFoundError(f"--embeds {path} is not a file")
    embeds = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(embeds, dict):
        raise ValueError(f"--embeds {path} holds a {type(embeds).__name__}; expected a dict of pipe(...) arguments "
                         "(torch.save(dict(prompt_embeds=..., pooled_prompt_embeds=...), path))")
    return embeds


def sweep_configs(base: DQARConfig, taus: list[float], streaks: list[int]) -> dict[str, DQARConfig]:
    """`base` at every (tau, max_reuse_streak) pair, named `tau=..., cap=...` (each validated by DQARConfig)."""
    out = {}
    for tau in taus:
        for cap in streaks:
            out[f"tau={tau:g}, cap={cap}"] = base.replace(tau=float(tau), max_reuse_streak=int(cap))
    return out
