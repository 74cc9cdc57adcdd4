"""The timing protocol (DESIGN.md section 6): warm up, synchronise, median of repeats, reuse and FLOPs beside time.

    rows = bench_sampling(model, labels, {"full": None, "dqar": DQARConfig()}, num_steps=20)
    write_bench("data/results/bench.json", rows, params)

A method is anything `dqar_lib.evaluation.methods.as_method` takes (None, a preset name, a DQARConfig, a
Method such as a diffusers peer); each run is one `run_method` call, timed around its sampling call only.
Every method runs in one process on the same seed, labels, steps and scheduler; repeats are interleaved
round-robin so that machine noise falls on all methods alike. Speedups are ratios to the first method.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..artifacts import write_result
from ..models.sampling import SCHEDULERS, conditioning, default_guidance
from .flops import attention_ceiling, dqar_flops, forward_flops
from .methods import DQARMethod, Method, as_method, run_method
from .metrics import psnr, ssim


def _device(device) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _time_once(fn: Callable, device: torch.device):
    """Run fn once; return (milliseconds, its result). CUDA: events around it, synchronised."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        out = fn()
        end.record()
        torch.cuda.synchronize(device)
        return start.elapsed_time(end), out
    t0 = time.perf_counter()
    out = fn()
    return (time.perf_counter() - t0) * 1e3, out


def summary(times_ms: list[float]) -> dict:
    q = statistics.quantiles(times_ms, n=4, method="inclusive") if len(times_ms) > 1 else [times_ms[0]] * 3
    return dict(median_ms=statistics.median(times_ms), min_ms=min(times_ms), max_ms=max(times_ms),
                iqr_ms=q[2] - q[0], times_ms=list(times_ms))


def _check_counts(warmup, repeats) -> None:
    if not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be an integer >= 1, got {repeats!r}")
    if not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"warmup must be an integer >= 0, got {warmup!r}")


def time_fn(fn: Callable, warmup: int = 2, repeats: int = 5, device=None) -> dict:
    """Time `fn()`: `warmup` untimed calls, then `repeats` timed ones.

    Returns median_ms, min_ms, max_ms, iqr_ms, times_ms, and on CUDA peak_memory_bytes (the peak allocated
    over the timed calls, after reset_peak_memory_stats); on CPU peak_memory_bytes is None.
    """
    if not callable(fn):
        raise ValueError(f"fn must be callable, got {type(fn).__name__}")
    _check_counts(warmup, repeats)
    dev = _device(device)
    for _ in range(warmup):
        fn()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    times = [_time_once(fn, dev)[0] for _ in range(repeats)]
    out = summary(times)
    out["peak_memory_bytes"] = torch.cuda.max_memory_allocated(dev) if dev.type == "cuda" else None
    return out


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


class _CallCounter:
    """Counts self-attention and feed-forward calls per block while a peer runs (peers report no reuse)."""

    def __init__(self, model):
        from ..method.hooks import self_attention_modules

        self.attn = [m.to_q for _, m in self_attention_modules(model)]  # a skipped attention never projects Q
        self.ff = [b.ff for b in getattr(model, "transformer_blocks", []) if hasattr(b, "ff")]
        self.n_attn, self.n_ff = [0] * len(self.attn), [0] * len(self.ff)
        self.handles = [m.register_forward_hook(self._bump(self.n_attn, i)) for i, m in enumerate(self.attn)]
        self.handles += [m.register_forward_hook(self._bump(self.n_ff, i)) for i, m in enumerate(self.ff)]

    @staticmethod
    def _bump(counts, i):
        def fn(*_):
            counts[i] += 1
        return fn

    def stats(self, num_steps: int) -> dict:
        for h in self.handles:
            h.remove()
        skipped = [max(0, num_steps - n) for n in self.n_attn]
        return {"reuse_fraction": sum(skipped) / (num_steps * len(self.attn)), "per_layer_reuse": skipped,
                "per_layer_compute": list(self.n_attn), "ff_skipped": [max(0, num_steps - n) for n in self.n_ff]}


def _set_block_compile(blocks, compiled) -> None:
    """Switch the blocks' compiled call on (a list of compiled impls) or off (None) for the next run."""
    for i, block in enumerate(blocks):
        block._compiled_call_impl = compiled[i] if compiled is not None else None


def time_method(model, method: Method | None, labels, kwargs: dict, dev, blocks=(), compiled=None,
                compile_options=None):
    """Time one sampling call of a prepared method (`run_method`); apply and remove stay outside the timing.

    Compiled runs: full compute and peers run with whole blocks compiled; DQAR compiles only its compute
    paths (regional compile in apply_dqar), so its Python decisions never enter a graph. A method other than
    DQAR reports no reuse of its own: its skipped attention and feed-forward calls are counted instead (except
    where it `replays_graphs`: a CUDA-graph replay runs no hooks, and full compute reuses nothing).
    """
    dqar = isinstance(method, DQARMethod)
    _set_block_compile(blocks, None if dqar else compiled)
    extra = dict(compile=True, compile_options=compile_options) if dqar and compiled is not None else {}
    ms = []

    def timed(run):
        counts = method is not None and not dqar and not method.replays_graphs  # a replay runs no hooks to count
        counter = _CallCounter(model) if counts else None
        try:
            t, res = _time_once(run, dev)
        finally:
            counted = counter.stats(kwargs["num_steps"]) if counter is not None else None
        if counted is not None:
            res.stats = counted
        ms.append(t)
        return res

    res = run_method(model, method, labels, prepare=False, around=timed, **extra, **kwargs)
    return ms[0], res


def method_fields(method: Method | None) -> dict | None:
    """DQAR: the config's fields that differ from DQARConfig's defaults; a peer: its name and params; full: None."""
    if method is None:
        return None
    if isinstance(method, DQARMethod):
        return dict(method.params)
    return {"peer": method.name, **method.params}


def _transformer_blocks(model) -> list[torch.nn.Module]:
    blocks = getattr(model, "transformer_blocks", None)
    if blocks is None:
        raise ValueError(f"compile=True needs a model with `transformer_blocks`; {type(model).__name__} has none")
    return list(blocks)


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
    _check_counts(warmup, repeats)
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
    times = {name: [] for name in methods}
    results = {}
    peak = dict.fromkeys(methods)
    graphs = dict.fromkeys(methods, 0)
    with compiled_blocks(model, compile, compile_options) as (blocks, compiled):
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        bar = tqdm(total=(warmup + repeats) * len(methods), desc="bench", disable=not progress, leave=False)
        for r in range(warmup + repeats):
            for name, method in methods.items():
                if errors is not None and name in errors:
                    continue
                if dev.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(dev)
                before = _dynamo_graphs()
                try:
                    ms, results[name] = time_method(model, method, labels, kwargs, dev, blocks, compiled,
                                                    compile_options)
                except Exception as e:
                    why = e
                    if isinstance(e, torch._dynamo.exc.FailOnRecompileLimitHit):
                        why = RuntimeError(f"the compiled run of {name!r} hit dynamo's recompile limit ({e}); a "
                                           "compiled row that fell back to eager is not reported")
                    if errors is None or name == next(iter(methods)):
                        if why is e:
                            raise
                        raise why from e
                    errors[name] = f"{type(why).__name__}: {why}"
                    continue
                graphs[name] += _dynamo_graphs() - before
                if r >= warmup:
                    times[name].append(ms)
                    if dev.type == "cuda":
                        peak[name] = max(peak[name] or 0, torch.cuda.max_memory_allocated(dev))
                bar.update()
        bar.close()
    methods = {k: v for k, v in methods.items() if errors is None or k not in errors}
    rows = _rows(model, n, methods, times, results, peak, num_steps, guidance, compile, text_tokens)
    for r in rows:
        r["compiled_graphs"] = graphs[r["method"]] if compile else None
    return rows


@contextlib.contextmanager
def compiled_blocks(model: torch.nn.Module, compile: bool, compile_options: dict | None = None):
    """A compiled benchmark's setup, undone on exit; yields (blocks, their compiled calls), or ([], None) without
    `compile`. Each transformer block is compiled (`block.compile(**compile_options)`) for full compute and peers;
    dynamo's cache is reset first, so graphs of earlier models never count against this run's recompile limit
    (`compile_limits`, a hard failure past it); module-hook guards are on, so DQAR's hooks (added later) never meet
    a graph compiled without them."""
    if not compile:
        yield [], None
        return
    blocks = _transformer_blocks(model)
    guards = torch._dynamo.config.skip_nnmodule_hook_guards
    torch._dynamo.reset()
    with torch._dynamo.config.patch(**compile_limits(len(blocks))):
        try:
            torch._dynamo.config.skip_nnmodule_hook_guards = False
            for block in blocks:
                block.compile(**(compile_options or {}))
            yield blocks, [block._compiled_call_impl for block in blocks]
        finally:
            for block in blocks:
                block._compiled_call_impl = None  # undo nn.Module.compile()
            torch._dynamo.config.skip_nnmodule_hook_guards = guards


def compile_limits(n_blocks: int) -> dict:
    """torch._dynamo settings for a compiled benchmark: every block (and every DQAR compute path) compiles the same
    code objects, so each may need its own graph; allow that many, and fail instead of silently running eager
    when a run needs more (dynamo's default is to log a warning and fall back)."""
    return dict(recompile_limit=max(8, 4 * n_blocks + 8), fail_on_recompile_limit_hit=True)


def _dynamo_graphs() -> int:
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


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


def write_bench(path: str | Path, rows: list[dict], params: dict | None = None) -> Path:
    """Write benchmark rows as `{"manifest": ..., "result": {"rows": rows}}` (atomic JSON with a manifest)."""
    if not rows:
        raise ValueError(f"rows must hold at least one benchmark row, got {rows!r}")
    return write_result(path, {"rows": rows}, params)


def dominating(df, method: str = "dqar", exclude: tuple[str, ...] = ("full",)) -> list[str]:
    """The methods of a benchmark table (a DataFrame indexed by method, with `speedup` and `psnr` columns) that
    are at least as fast and as close to full compute as `method`, and strictly better in one of the two."""
    if method not in df.index:
        raise ValueError(f"method {method!r} is not in the table; it has {list(df.index)}")
    d = df.loc[method]
    others = df.drop(index=[method, *[m for m in exclude if m in df.index]])
    return [m for m, r in others.iterrows()
            if r.speedup >= d.speedup and r.psnr >= d.psnr and (r.speedup > d.speedup or r.psnr > d.psnr)]
