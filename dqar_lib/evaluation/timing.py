"""The timing rules every runner follows (DESIGN.md section 6): warm up, synchronise, median of repeats.

For example::

    stats = time_fn(lambda: model(**inputs), warmup=2, repeats=5)           # one callable
    times, peak = interleaved(names, timed, warmup=1, repeats=3, dev=dev)   # several methods, round-robin

One timed call is `time_once` (CUDA events around it, synchronised; else the wall clock); a method's sampling
call is `time_method` (prepare, apply and remove stay outside the timing; a peer's skipped attention and
feed-forward calls are counted by `CallCounter`). Repeats of several methods are interleaved round-robin, so that
machine noise falls on all of them alike, and summarised by `summary` (median and spread). A compiled run sets its
blocks up with `compiled_blocks` under `compile_limits`, and a run that would exceed dynamo's recompile limit is
refused (`recompile_error`) rather than reported: dynamo would fall back to eager without a word. The runners:
`run_sampling` (dqar_lib's own sampling loop), `run_pipeline` (a diffusers pipeline), `run_gpu` (the GPU run).
"""

from __future__ import annotations

import contextlib
import resource
import statistics
import sys
import time
from collections.abc import Callable

import torch
from tqdm.auto import tqdm

from .methods import DQARMethod, Method, run_method


def resolve_device(device) -> torch.device:
    """`device` as a torch.device; None: CUDA when available, else the CPU."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def time_once(fn: Callable, device: torch.device):
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
    """median_ms, min_ms, max_ms, iqr_ms (inclusive quartiles; 0 for one time) and the times themselves."""
    q = statistics.quantiles(times_ms, n=4, method="inclusive") if len(times_ms) > 1 else [times_ms[0]] * 3
    return dict(median_ms=statistics.median(times_ms), min_ms=min(times_ms), max_ms=max(times_ms),
                iqr_ms=q[2] - q[0], times_ms=list(times_ms))


def check_counts(warmup, repeats) -> None:
    """A ValueError unless `repeats` is an integer >= 1 and `warmup` an integer >= 0."""
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
    check_counts(warmup, repeats)
    dev = resolve_device(device)
    for _ in range(warmup):
        fn()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    times = [time_once(fn, dev)[0] for _ in range(repeats)]
    out = summary(times)
    out["peak_memory_bytes"] = torch.cuda.max_memory_allocated(dev) if dev.type == "cuda" else None
    return out


def interleaved(names, timed: Callable[[str], float | None], warmup: int, repeats: int, dev=None,
                progress: bool = True, desc: str = "bench") -> tuple[dict[str, list[float]], dict[str, int | None]]:
    """`warmup` untimed then `repeats` timed rounds; each round calls `timed(name)` (its milliseconds) for every
    name in order. A name whose `timed` returns None has failed: it is left out of the later rounds.

    Returns (name -> the timed rounds' milliseconds, name -> peak CUDA memory over its timed runs). The peak is
    tracked (reset before each run) only when `dev` is a CUDA device; it is None otherwise."""
    names = list(names)
    cuda = dev is not None and torch.device(dev).type == "cuda"
    times, peak, failed = {n: [] for n in names}, dict.fromkeys(names), set()
    bar = tqdm(total=(warmup + repeats) * len(names), desc=desc, disable=not progress, leave=False)
    for r in range(warmup + repeats):
        for name in names:
            if name in failed:
                continue
            if cuda:
                torch.cuda.reset_peak_memory_stats(dev)
            ms = timed(name)
            if ms is None:
                failed.add(name)
                continue
            if r >= warmup:
                times[name].append(ms)
                if cuda:
                    peak[name] = max(peak[name] or 0, torch.cuda.max_memory_allocated(dev))
            bar.update()
    bar.close()
    return times, peak


def resident_bytes() -> int:
    """The process's resident memory now (Linux: /proc/self/statm); elsewhere its peak so far (ru_maxrss)."""
    import os

    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(rss if sys.platform == "darwin" else rss * 1024)


def peak_memory(dev: torch.device) -> tuple[int, str]:
    """(bytes, what): CUDA's peak allocation since the last reset, else the process's peak resident set (it never
    goes down, so on CPU it bounds every method run so far, not this one alone)."""
    if dev.type == "cuda":
        return int(torch.cuda.max_memory_allocated(dev)), "torch.cuda.max_memory_allocated"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024), "process peak RSS (monotone over the run)"


class CallCounter:
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
        """Removes the hooks; the reuse fraction and per-layer counts (as DQAR's controller reports them)."""
        for h in self.handles:
            h.remove()
        skipped = [max(0, num_steps - n) for n in self.n_attn]
        return {"reuse_fraction": sum(skipped) / (num_steps * len(self.attn)), "per_layer_reuse": skipped,
                "per_layer_compute": list(self.n_attn), "ff_skipped": [max(0, num_steps - n) for n in self.n_ff]}


def time_method(model, method: Method | None, labels, kwargs: dict, dev, blocks=(), compiled=None,
                compile_options=None):
    """Time one sampling call of a prepared method (`run_method`); apply and remove stay outside the timing.
    Returns (milliseconds, its SampleResult).

    Compiled runs (`blocks` and their `compiled` calls from `compiled_blocks`): full compute and peers run with
    whole blocks compiled; DQAR compiles only its compute paths (regional compile in apply_dqar), so its Python
    decisions never enter a graph. A method other than DQAR reports no reuse of its own: its skipped attention and
    feed-forward calls are counted instead (except where it `replays_graphs`: a CUDA-graph replay runs no hooks,
    and full compute reuses nothing).
    """
    dqar = isinstance(method, DQARMethod)
    for i, block in enumerate(blocks):  # the blocks' compiled call: on for full compute and peers, off for DQAR
        block._compiled_call_impl = compiled[i] if compiled is not None and not dqar else None
    extra = dict(compile=True, compile_options=compile_options) if dqar and compiled is not None else {}
    ms = []

    def timed(run):
        counts = method is not None and not dqar and not method.replays_graphs  # a replay runs no hooks to count
        counter = CallCounter(model) if counts else None
        try:
            t, res = time_once(run, dev)
        finally:
            counted = counter.stats(kwargs["num_steps"]) if counter is not None else None
        if counted is not None:
            res.stats = counted
        ms.append(t)
        return res

    res = run_method(model, method, labels, prepare=False, around=timed, **extra, **kwargs)
    return ms[0], res


def transformer_blocks(model) -> list[torch.nn.Module]:
    """The model's `transformer_blocks` as a list; a ValueError naming the model where it has none."""
    blocks = getattr(model, "transformer_blocks", None)
    if blocks is None:
        raise ValueError(f"compile=True needs a model with `transformer_blocks`; {type(model).__name__} has none")
    return list(blocks)


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
    blocks = transformer_blocks(model)
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


def dynamo_graphs() -> int:
    """How many graphs dynamo has compiled in this process (since its last reset)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def recompile_error(name: str, e: Exception) -> Exception:
    """The error to raise for method `name`'s failure `e`: a RuntimeError naming the method where `e` is dynamo's
    recompile limit (a compiled row that fell back to eager is not reported), else `e` itself."""
    if isinstance(e, torch._dynamo.exc.FailOnRecompileLimitHit):
        return RuntimeError(f"the compiled run of {name!r} hit dynamo's recompile limit ({e}); a "
                            "compiled row that fell back to eager is not reported")
    return e
