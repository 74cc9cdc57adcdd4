"""Reading benchmark results: who dominates whom, speed at equal quality, the front's bar point, the GPU run.

    write_bench("data/results/bench.json", rows, params)       # rows of run_sampling.bench_sampling
    dominating(pd.DataFrame(rows).set_index("method"))          # the methods at least as fast and as close
    speed_at_psnr(front, family="family", targets=(35, 40, 45))  # the front's rows (run_sampling.front_bench)
    gpu = load_results("data/results/gpu"); print(finding(gpu))  # the GPU run's files (run_gpu)

Everything here reads rows the runners wrote (tables of them, pandas DataFrames); nothing here times anything.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..artifacts import read_result, write_result
from .graphed import CUDAGraphFull


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


def speed_at_psnr(df, family: str = "family", targets=(35.0, 40.0, 45.0)) -> dict[str, dict[float, float | None]]:
    """Each family's speedup at equal quality: its best speedup among points at or above the target PSNR, linearly
    interpolated between the two points that bracket the target on the family's upper front (None: never reached).

    `df` holds one row per point with columns `speedup`, `psnr` and `family` (e.g. "fewer steps", "SeaCache").
    """
    out = {}
    for fam, g in df.groupby(family):
        pts = sorted(zip(g.psnr.clip(upper=99.0), g.speedup), key=lambda p: -p[0])  # best quality first
        front, best = [], -np.inf
        for q, v in pts:  # the upper front: each point faster than every better-quality one
            if v > best:
                front.append((q, v))
                best = v
        res = {}
        for t in targets:
            above = [(q, v) for q, v in front if q >= t]
            below = [(q, v) for q, v in front if q < t]
            if not above:
                res[t] = None
            elif not below:
                res[t] = max(v for _, v in above)
            else:
                (q1, v1), (q0, v0) = above[-1], below[0]  # the fastest point above, the best-quality one below
                res[t] = v1 + (v0 - v1) * (q1 - t) / (q1 - q0)
        out[fam] = res
    return out


def speed_at_accuracy(df, family: str = "family", acc_tol: float = 0.02) -> dict[str, float | None]:
    """Each family's speedup at equal distribution quality: its fastest point whose class accuracy lies within
    `acc_tol` of full compute's (None: no point does). `df` has one row per point with columns `method` (one of
    them "full"), `speedup`, `class_accuracy` and `family`."""
    full = df[df.method == "full"]
    if len(full) != 1:
        raise ValueError(f"speed_at_accuracy needs exactly one 'full' row to compare against, found {len(full)}")
    near = (df.class_accuracy - float(full.class_accuracy.iloc[0])).abs() <= acc_tol
    best = df[near].groupby(family).speedup.max()
    return {fam: (float(best[fam]) if fam in best.index else None) for fam in df[family].unique()}


def bar_point(df, prefix: str | tuple[str, ...] = "DQAR", min_psnr: float = 43.0,
              acc_tol: float = 0.02) -> str | None:
    """The fastest entry whose name starts with `prefix` (or any of a tuple of prefixes) at `min_psnr` dB or more
    and with class accuracy within `acc_tol` of full compute's (the bar the front is read against); None when no
    entry qualifies.

    `df` is the front indexed by method name, with a "full" row and columns `speedup`, `psnr`, `class_accuracy`."""
    if "full" not in df.index:
        raise ValueError(f"bar_point needs the front's 'full' row to compare class accuracy; rows: {list(df.index)}")
    near = (df.class_accuracy - df.loc["full"].class_accuracy).abs() <= acc_tol
    ok = df[df.index.str.startswith(prefix) & (df.psnr >= min_psnr) & near].speedup
    return ok.idxmax() if len(ok) else None


def load_results(folder: str | Path):
    """Every benchmark file in `folder` as one DataFrame: a row per (file, method), with the file's model,
    weights, compiled flag and device from its manifest. Empty (no rows) when the folder holds none. The CUDA-graph
    baseline is full compute: its reuse is 0 and its FLOPs ratio 1 whatever an older file counted."""
    import pandas as pd

    frames = []
    for path in sorted(Path(folder).glob("*.json")):
        res = read_result(path)
        params, rows = res["manifest"]["params"], res["result"]["rows"]
        frames.append(pd.DataFrame(rows).assign(file=path.name, model=params["model"], weights=params["weights"],
                                               device=res["manifest"]["device"], date=res["manifest"]["date"]))
    if not frames:
        return pd.DataFrame()
    df = pd.concat(frames, ignore_index=True)
    # runs before the CUDA-graph baseline said `replays_graphs` counted its silent hooks as reuse (README.md there)
    graphed = df["method"] == CUDAGraphFull.name
    df.loc[graphed, ["reuse_fraction", "flops_ratio"]] = [0.0, 1.0]
    return df


def against_baselines(df):
    """Per model, every (mode, method) row of `load_results` with its median time and its speed against each
    full-compute baseline measured for that model: eager, compiled and CUDA-graphed (NaN where one is missing).
    Rows of one file share a process; a ratio across the eager and the compiled file compares two runs on one
    machine (the `same_run` column says which ratios are within one)."""
    import pandas as pd

    out = []
    for model, rows in df.groupby("model", sort=False):
        base = {}
        for label, compiled, method in (("eager", False, "full"), ("compiled", True, "full"),
                                        ("CUDA graph", False, CUDAGraphFull.name)):
            hit = rows[(rows.compiled == compiled) & (rows.method == method)]
            base[label] = float(hit.median_ms.iloc[0]) if len(hit) else float("nan")
        t = rows[["compiled", "method", "median_ms", "iqr_ms", "reuse_fraction"]].copy()
        t.insert(0, "model", model)
        for label, ms in base.items():
            t[f"x vs {label}"] = ms / t.median_ms
        t["same_run"] = t.compiled.map({False: "eager, CUDA graph", True: "compiled"})
        out.append(t)
    return pd.concat(out, ignore_index=True) if out else pd.DataFrame()


def best_compiled(gpu):
    """The compiled DQAR row (a "dqar…" or "gates…" method) with the highest speedup over compiled full compute
    in a `load_results` table, or None when there is none."""
    rows = gpu[gpu.compiled & gpu.method.str.lower().str.startswith(("dqar", "gates"))] if len(gpu) else gpu
    return rows.loc[rows.speedup.idxmax()] if len(rows) else None


def finding(gpu) -> str:
    """What a `load_results` table shows, in one paragraph: eager full compute, the CUDA-graphed baseline against
    it, and the best compiled DQAR row against the compiled and the CUDA-graphed baselines."""
    best = best_compiled(gpu)
    if best is None:
        return "No GPU run is committed yet."
    m = against_baselines(gpu[gpu.model == best.model]).set_index(["compiled", "method"])
    full, dq, run0 = m.loc[(False, "full")], m.loc[(True, best.method)], gpu[gpu.model == best.model].iloc[0]
    graph = m.loc[(False, CUDAGraphFull.name)] if (False, CUDAGraphFull.name) in m.index else None
    text = (f"On {best.device}, {best.model.split('/')[-1]} with {run0.weights.split(' (')[0]} weights in fp16 "
            f"({run0.images} images with CFG, DDIM-{run0.steps}): eager full compute takes {full.median_ms:.0f} ms "
            "a sampling call")
    if graph is not None:
        text += (f", and replaying each denoiser call from a CUDA graph alone makes it {graph['x vs eager']:.2f}x "
                 "faster: the eager step is launch-bound")
    text += f". DQAR's {best.method!r}, compiled, runs at {dq['x vs compiled']:.2f}x the compiled fp16 baseline"
    if graph is not None:
        text += f" and {dq['x vs CUDA graph']:.2f}x the CUDA-graphed one (two runs, one machine)"
    return text + f", reusing {dq.reuse_fraction:.2f} of the (step, layer) computes."
