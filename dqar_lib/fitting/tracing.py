"""Turning a controller trace (one row per (step, layer)) into arrays."""

from __future__ import annotations

import numpy as np


def trace_matrix(trace: list[dict], field: str) -> np.ndarray:
    """(steps, layers) array of one field; missing values become NaN."""
    if not trace:
        raise ValueError("the trace is empty: run a sampler with DQAR attached first")
    S = max(r["step"] for r in trace) + 1
    L = max(r["layer"] for r in trace) + 1
    dtype = bool if field == "reuse" else float
    m = np.zeros((S, L), dtype=bool) if dtype is bool else np.full((S, L), np.nan)
    for r in trace:
        v = r[field]
        if v is not None:
            m[r["step"], r["layer"]] = v
    return m


class _Stop(Exception):
    """Raised by record_trace's step callback after `max_steps` steps."""


def record_trace(model, class_labels, num_steps: int = 50, scheduler: str = "ddim", seed: int = 0,
                 guidance_scale: float | None = None, progress: bool = False,
                 max_steps: int | None = None, **sample_kwargs) -> list[dict]:
    """Full-compute sampling run that records, per (step, layer), what a reuse decision would face.

    Each row: step, t, layer, H_t / SNR_t / x_norm as the controller saw them before the step (one step
    late, exactly what the gates read), and the change of the block's attention output against the
    previous step — `rel_l2` = ||A_s - A_{s-1}|| / ||A_s|| and `cosine` — the error that reusing
    step s-1's output at step s would make. Step 0 has no previous output (NaN).
    `sample_kwargs` go to `sample` (a PixArt-style model's prompt_embeds, prompt_mask, ...).
    """
    import torch

    from ..method.config import DQARConfig
    from ..method.hooks import get_controller, self_attention_modules
    from ..models.sampling import sample

    if max_steps is not None and not (isinstance(max_steps, int) and 0 < max_steps <= num_steps):
        raise ValueError(f"max_steps={max_steps!r} is invalid: expected None or an integer in [1, {num_steps}]")
    seen = {}

    def stop_after(i, _t):
        seen.setdefault("ctl", get_controller(model))
        if max_steps is not None and i == max_steps:
            raise _Stop

    prev: dict[int, torch.Tensor] = {}
    change: list[tuple[float, float]] = []  # in call order: (step, layer) row-major

    def hook(i):
        def fn(_mod, _args, out):
            o = out.detach().float().flatten(1)  # (B, N*D)
            if i in prev:
                p = prev[i]
                rel = ((o - p).norm() / o.norm().clamp_min(1e-12)).item()
                cos = torch.nn.functional.cosine_similarity(o, p, dim=1).mean().item()
            else:
                rel = cos = float("nan")
            prev[i] = o
            change.append((rel, cos))
        return fn

    handles = [m.register_forward_hook(hook(i)) for i, (_, m) in enumerate(self_attention_modules(model))]
    try:
        sample(model, class_labels, num_steps=num_steps, scheduler=scheduler, seed=seed,
               guidance_scale=guidance_scale, dqar=DQARConfig.preset("off", collect_stats=True),
               progress=progress, step_callback=stop_after, **sample_kwargs)
    except _Stop:
        pass
    finally:
        for h in handles:
            h.remove()
    rows = seen["ctl"].trace()
    if len(rows) != len(change):
        raise RuntimeError(f"trace has {len(rows)} rows but {len(change)} attention calls were seen")
    for r, (rel, cos) in zip(rows, change):
        r.update(rel_l2=rel, cosine=cos, scheduler=scheduler, seed=seed, num_steps=num_steps)
        del r["reuse"], r["reason"]
    return rows


def gate_thresholds(rows: list[dict], tau_quantile: float = 0.5, snr_quantile: float = 0.3,
                    warmup: float = 0.2, num_train_timesteps: int = 1000) -> dict:
    """Hand-set gate thresholds read off traces: tau and snr_lo at quantiles of the post-warmup values.

    The rule is deliberately simple (the policy notebook compares it with a learned policy):
    tau = the `tau_quantile` of H_t, snr_lo = the `snr_quantile` of SNR_t, over rows past `warmup`.
    """
    from ..method.schedule import progress

    for name, q in (("tau_quantile", tau_quantile), ("snr_quantile", snr_quantile)):
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"{name}={q!r} is invalid: expected a number in [0, 1]")
    late = [r for r in rows if r["H_t"] is not None and r["SNR_t"] is not None
            and progress(r["t"], num_train_timesteps) >= warmup]
    if not late:
        raise ValueError("no trace rows past warmup carry H_t and SNR_t")
    H = np.array([r["H_t"] for r in late], dtype=float)
    snr = np.array([r["SNR_t"] for r in late], dtype=float)
    return {"tau": float(np.quantile(H, tau_quantile)), "snr_lo": float(np.quantile(snr, snr_quantile))}


def _fingerprint(model) -> str:
    """A short hash of the model's first and last parameters: a partial file from another model is refused."""
    import hashlib

    params = list(model.parameters())
    h = hashlib.sha1()
    for p in (params[0], params[-1]):
        h.update(p.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def record_traces(model, class_labels, runs: list[tuple[str, int, int]], partial_path) -> list[dict]:
    """`record_trace` over many (scheduler, num_steps, seed) runs, resumable: after each run the rows so far
    are written (atomically) to `partial_path`; a rerun skips the runs found there, and the file is removed
    when all are done. A partial file written for another model or other labels is an error naming it."""
    import json
    from pathlib import Path

    from tqdm.auto import tqdm

    from ..method.files import atomic_write

    partial_path = Path(partial_path)
    key = {"model": _fingerprint(model), "labels": [int(c) for c in class_labels]}
    done: dict[str, list[dict]] = {}
    if partial_path.is_file():
        try:
            saved = json.loads(partial_path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{partial_path} is not a readable partial trace file ({e}); delete it") from e
        if saved.get("key") != key:
            raise ValueError(f"{partial_path} holds traces of another model or other labels; delete it to start over")
        done = saved["runs"]
    for sched, n, seed in tqdm(runs, desc="traces"):
        name = f"{sched}/{n}/{seed}"
        if name in done:
            continue
        done[name] = record_trace(model, class_labels, num_steps=n, scheduler=sched, seed=seed)
        with atomic_write(partial_path) as f:
            json.dump({"key": key, "runs": done}, f)
    rows = [r for sched, n, seed in runs for r in done[f"{sched}/{n}/{seed}"]]
    partial_path.unlink(missing_ok=True)
    return rows


def stored_traces(scheduler: str | None = None) -> list[dict]:
    """The rows of the committed traces (data/traces/traces.json, written by notebook 03), optionally of one
    scheduler's runs only."""
    from ..artifacts import TRACES, read_result

    rows = read_result(TRACES)["result"]["rows"]
    return rows if scheduler is None else [r for r in rows if r["scheduler"] == scheduler]
