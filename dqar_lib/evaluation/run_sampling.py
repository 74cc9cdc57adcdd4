"""Timing methods in dqar_lib's own sampling loop (`sample`), by the rules of `timing`.

    rows = bench_sampling(model, labels, {"full": None, "dqar": DQARConfig()}, num_steps=20)
    rows = front_bench(model, labels, {"full": (None, 50), "ddim-25": (None, 25), "forecast": ("forecast", 50)})
    write_bench("data/results/bench.json", rows, params)                      # dqar_lib.evaluation.analysis

A method is anything `dqar_lib.evaluation.methods.as_method` takes (None, a preset name, a DQARConfig, a
Method such as a diffusers peer); each run is one `run_method` call, timed around its sampling call only.
Every method runs in one process on the same seed and labels; repeats are interleaved round-robin
(`timing.interleaved`) so that machine noise falls on all methods alike. `bench_sampling` runs every method at
one step count and scheduler, with FLOPs, memory and compiled runs; `front_bench` gives each entry its own steps
and scheduler (the speed-quality front: methods against simply taking fewer steps). Speedups are ratios to the
first method (bench_sampling) or to the reference entry (front_bench).
"""

from __future__ import annotations

import statistics

import torch

from ..models.sampling import SCHEDULERS, conditioning, default_guidance
from .flops import attention_ceiling, dqar_flops, forward_flops
from .methods import DQARMethod, Method, as_method, method_fields
from .metrics import psnr, ssim
from .timing import check_counts, compiled_blocks, dynamo_graphs, interleaved, recompile_error, summary, time_method


def _methods(configs: dict) -> dict[str, Method | None]:
    """`as_method` of every value; the bad ones named together in one ValueError."""
    methods, bad = {}, {}
    for name, value in configs.items():
        try:
            methods[name] = as_method(value)
        except ValueError as e:
            bad[name] = str(e)
    if bad:
        raise ValueError("configs values must be None, a preset name, a DQARConfig or a Method (e.g. a peer): "
                         + "; ".join(f"{k!r}: {v}" for k, v in bad.items()))
    return methods


def _run_flops(model, batch: int, method: Method | None, stats: dict, text_tokens: int | None = None) -> float:
    """Analytic FLOPs of one forward as it ran: per-layer reuse fractions and CFG sharing from the controller."""
    if method is None or not stats:
        return float(forward_flops(model, batch, text_tokens)["total"])
    if not isinstance(method, DQARMethod):  # peers: skipped attention and skipped feed-forward calls, counted
        parts, L = forward_flops(model, batch, text_tokens), model.config.num_layers
        steps = stats["per_layer_reuse"][0] + stats["per_layer_compute"][0]
        attn = (parts["attn_qkv"] + parts["attn_out"] + parts["attn_core"]) / L
        saved = sum(stats["per_layer_reuse"]) * attn + sum(stats["ff_skipped"]) * parts["mlp"] / L
        return float(parts["total"] - saved / max(1, steps))
    reused, computed = stats["per_layer_reuse"], stats["per_layer_compute"]
    calls = [r + c for r, c in zip(reused, computed)]
    frac = [r / n if n else 0.0 for r, n in zip(reused, calls)]
    shared = stats.get("cfg_shared", 0) / sum(calls) if sum(calls) else 0.0
    return float(dqar_flops(model, batch, frac, method.config.granularity, text_tokens, cfg_shared=shared))


def bench_sampling(model: torch.nn.Module, labels, configs: dict, num_steps: int = 20, scheduler: str = "ddim",
                   guidance_scale: float | None = None, seed: int = 0, repeats: int = 3, warmup: int = 1,
                   compile: bool = False, compile_options: dict | None = None, progress: bool = True,
                   prompt_embeds: torch.Tensor | None = None, errors: dict | None = None) -> list[dict]:
    """Time `dqar_lib.sample` for each named method: a DQARConfig, a preset name, None for full compute, or a
    Method (dqar_lib.evaluation.methods; e.g. dqar_lib.evaluation.peers.PEERS[...](),
    dqar_lib.evaluation.ptq.W8A8Peer()), prepared once and applied per run.

    Each method runs `warmup` untimed and `repeats` timed samplings, interleaved round-robin. One row per
    method: times (whole sampling call; median, spread, per image, per step), speedup against the first
    method (normally None = full compute), reuse fraction, analytic FLOPs per image (all steps) and their
    ratio, the attention ceiling, and PSNR/SSIM of its images against the first method's (None without images).
    A PixArt-style model takes `prompt_embeds` (N, T, caption_channels) instead of labels (pass labels=None).
    `compile=True`: full compute and peers run with each transformer block compiled
    (`block.compile(**compile_options)`), DQAR with its compute paths compiled on their own
    (`apply_dqar(compile=True)`); undone afterwards, torch._dynamo's skip_nnmodule_hook_guards included. A compiled
    benchmark resets dynamo's cache first and fails, naming the method, where a run would exceed its recompile limit
    (dynamo would fall back to eager without a word); each row's `compiled_graphs` counts the graphs it compiled.
    `errors`: None (the default) raises on the first method that fails; a dict instead collects
    name -> "ExceptionType: message" for each method (other than the first, the baseline) that fails, leaves it
    out of the rows and times the rest (one broken kernel must not cost a GPU run's other rows).
    """
    if not configs:
        raise ValueError(f"configs must name at least one method, got {configs!r}")
    if scheduler not in SCHEDULERS:
        raise ValueError(f"scheduler must be one of {SCHEDULERS}, got {scheduler!r}")
    if not isinstance(num_steps, int) or num_steps <= 0:
        raise ValueError(f"num_steps must be a positive integer, got {num_steps!r}")
    check_counts(warmup, repeats)
    methods = _methods(configs)
    guidance = default_guidance(model) if guidance_scale is None else float(guidance_scale)
    n, _ = conditioning(model, labels, prompt_embeds, use_cfg=False)  # checks the conditioning before any run
    text_tokens = None if prompt_embeds is None else prompt_embeds.shape[1]
    dev = next(model.parameters()).device
    kwargs = dict(num_steps=num_steps, guidance_scale=guidance, seed=seed, scheduler=scheduler)
    if prompt_embeds is not None:
        kwargs["prompt_embeds"] = prompt_embeds
    for method in methods.values():
        if method is not None:
            method.prepare(model, labels, **kwargs)
    kwargs["progress"] = False
    results = {}
    graphs = dict.fromkeys(methods, 0)
    with compiled_blocks(model, compile, compile_options) as (blocks, compiled):

        def timed(name):  # ms, or None where a method other than the baseline fails and `errors` collects it
            before = dynamo_graphs()
            try:
                ms, results[name] = time_method(model, methods[name], labels, kwargs, dev, blocks, compiled,
                                                compile_options)
            except Exception as e:
                why = recompile_error(name, e)
                if errors is None or name == next(iter(methods)):
                    if why is e:
                        raise
                    raise why from e
                errors[name] = f"{type(why).__name__}: {why}"
                return None
            graphs[name] += dynamo_graphs() - before
            return ms

        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        times, peak = interleaved(methods, timed, warmup, repeats, dev, progress, "bench")
    methods = {k: v for k, v in methods.items() if errors is None or k not in errors}
    rows = _rows(model, n, methods, times, results, peak, num_steps, guidance, compile, text_tokens)
    for r in rows:
        r["compiled_graphs"] = graphs[r["method"]] if compile else None
    return rows


def _rows(model, n, methods, times, results, peak, num_steps, guidance, compiled, text_tokens=None) -> list[dict]:
    batch = n * (2 if guidance > 1.0 else 1)
    base_name = next(iter(methods))
    base = results[base_name]
    base_ms = statistics.median(times[base_name])
    base_flops = None
    ceiling = attention_ceiling(model, batch, text_tokens)
    rows = []
    for name, method in methods.items():
        res, s = results[name], summary(times[name])
        flops = num_steps * _run_flops(model, batch, method, res.stats, text_tokens) / n
        base_flops = flops if base_flops is None else base_flops
        same = res.images is not None and base.images is not None
        rows.append(dict(
            method=name, baseline=base_name, config=method_fields(method), compiled=compiled,
            images=n, steps=num_steps, **s, ms_per_image=s["median_ms"] / n, ms_per_step=s["median_ms"] / num_steps,
            speedup=base_ms / s["median_ms"], reuse_fraction=res.stats.get("reuse_fraction", 0.0),
            flops_per_image=flops, flops_ratio=base_flops / flops, attention_ceiling=ceiling,
            peak_memory_bytes=peak[name], peak_cache_bytes=res.stats.get("peak_cache_bytes", 0),
            psnr=psnr(res.images, base.images) if same else None, ssim=ssim(res.images, base.images) if same else None,
            latent_rel_l2=((res.latents.float() - base.latents.float()).norm() / base.latents.float().norm()).item(),
            overhead_fraction=res.stats.get("decision_seconds", 0.0) * 1000 / num_steps / (s["median_ms"] / num_steps),
        ))
    return rows


def front_bench(model: torch.nn.Module, labels, entries: dict[str, tuple], reference: str = "full", seed: int = 0,
                repeats: int = 3, warmup: int = 1, guidance_scale: float | None = None,
                progress: bool = True) -> list[dict]:
    """The speed-quality front (entries from dqar_lib.evaluation.front): an entry is (method, steps[, scheduler]),
    prepared once, then timed `repeats` times round-robin after `warmup` untimed rounds. Quality is PSNR / SSIM
    of each entry's images against the reference entry's (full compute at its steps, same seed and labels).

    One row per entry: median / IQR of the whole sampling call, speedup and PSNR / SSIM against `reference`,
    reuse fraction (DQAR's own count; for other methods the skipped attention calls), steps and scheduler."""
    if reference not in entries:
        raise ValueError(f"reference {reference!r} is not an entry; entries are {list(entries)}")
    guidance = default_guidance(model) if guidance_scale is None else float(guidance_scale)
    dev = next(model.parameters()).device
    plan = {}
    for name, e in entries.items():
        if len(e) not in (2, 3):
            raise ValueError(f"entry {name!r} must be (method, steps) or (method, steps, scheduler), got {e!r}")
        method, steps, sched = as_method(e[0]), int(e[1]), e[2] if len(e) == 3 else "ddim"
        kw = dict(num_steps=steps, scheduler=sched, seed=seed, guidance_scale=guidance, progress=False)
        if method is not None:
            method.prepare(model, labels, **kw)
        plan[name] = (method, kw)
    results = {}

    def timed(name):
        method, kw = plan[name]
        ms, results[name] = time_method(model, method, labels, kw, dev)
        return ms

    times, _ = interleaved(plan, timed, warmup, repeats, progress=progress, desc="front")
    ref, base_ms = results[reference], statistics.median(times[reference])
    rows = []
    for name, (_, kw) in plan.items():
        res, s = results[name], summary(times[name])
        rows.append(dict(method=name, steps=kw["num_steps"], scheduler=kw["scheduler"], **s,
                         speedup=base_ms / s["median_ms"], reuse_fraction=res.stats.get("reuse_fraction", 0.0),
                         psnr=psnr(res.images, ref.images), ssim=ssim(res.images, ref.images),
                         peak_cache_bytes=res.stats.get("peak_cache_bytes", 0)))
    return rows
