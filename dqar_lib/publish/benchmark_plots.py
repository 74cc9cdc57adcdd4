"""The figures `python -m dqar_lib.benchmark` writes: a method comparison and a gate-threshold sweep.

Each panel is a function of an `ax` and the benchmark's rows (dqar_lib.evaluation.run_pipeline), in the book's
style (dqar_lib.publish.plots.style); the two figure functions lay the panels out.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib.pyplot as plt

from ..method.files import atomic_write
from .plots import style

PANELS = (("ms_per_image", "ms per image"), ("peak_memory_bytes", "peak memory (MiB)"),
          ("reuse_fraction", "reuse fraction"), ("psnr", "PSNR vs full (dB)"))


def _value(row: dict, field: str) -> float:
    v = row.get(field)
    if v is None:
        return math.nan
    return v / 2**20 if field == "peak_memory_bytes" else float(v)


def method_bars(ax, rows: list[dict], field: str, label: str) -> None:
    """One horizontal bar per method of `field`; an infinite PSNR (identical images) is written, not drawn."""
    names = [r["method"] for r in rows]
    vals = [_value(r, field) for r in rows]
    finite = [v if math.isfinite(v) else 0.0 for v in vals]
    ax.barh(range(len(rows)), finite, color=[f"C{i}" for i in range(len(rows))])
    for i, v in enumerate(vals):
        if not math.isfinite(v):
            ax.text(0, i, " identical" if v == math.inf else " n/a", va="center", fontsize=8)
    ax.set_yticks(range(len(rows)), names, fontsize=8)
    ax.set_ylim(len(rows) - 0.5, -0.5)  # the first method on top
    ax.set_xlabel(label)


def benchmark_figure(rows: list[dict], title: str = ""):
    """Time per image, peak memory, reuse and PSNR, one panel each, a bar per method."""
    style()
    fig, axes = plt.subplots(1, len(PANELS), figsize=(3.2 * len(PANELS), 0.45 * len(rows) + 1.6), sharey=True)
    for ax, (field, label) in zip(axes, PANELS):
        method_bars(ax, rows, field, label)
    fig.suptitle(title, fontsize=10)
    return fig


def sweep_lines(ax, rows: list[dict], field: str, label: str) -> None:
    """`field` against the swept tau, one line per reuse cap (rows carry `sweep = {"tau", "cap"}`)."""
    for j, cap in enumerate(sorted({r["sweep"]["cap"] for r in rows})):
        pts = sorted((r["sweep"]["tau"], _value(r, field)) for r in rows if r["sweep"]["cap"] == cap)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", color=f"C{j}", label=f"max streak {cap}")
    ax.set(xlabel="tau (entropy gate)", ylabel=label)


def sweep_figure(rows: list[dict], title: str = ""):
    """Runtime, peak memory and reuse against the entropy threshold tau, a line per reuse cap."""
    style()
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.2))
    for ax, (field, label) in zip(axes, PANELS[:3]):
        sweep_lines(ax, rows, field, label)
    axes[-1].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    return fig


THRESHOLD_PANELS = (("avg_time_s", "runtime (s)"), ("avg_rss_mb", "RSS (MiB)"), ("avg_reuse", "reuse events"))


def threshold_sweep_figure(records: list[dict], title: str = ""):
    """The scaffold's sweep (dqar_lib.evaluation.threshold_sweep): runtime, resident memory and reuse events at each
    (threshold, limit) point, a line per scenario (baseline, static, DQAR); runtime with its standard deviation."""
    style()
    points = list(dict.fromkeys((r["threshold"], r["max_reuse"]) for r in records))
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    for ax, (field, label) in zip(axes, THRESHOLD_PANELS):
        for j, scenario in enumerate(dict.fromkeys(r["scenario"] for r in records)):
            by = {(r["threshold"], r["max_reuse"]): r for r in records if r["scenario"] == scenario}
            ys = [by[p][field] if p in by else math.nan for p in points]
            err = [by[p]["std_time_s"] if p in by else 0.0 for p in points] if field == "avg_time_s" else None
            ax.errorbar(range(len(points)), ys, yerr=err, marker="o", color=f"C{j}", label=scenario, capsize=2)
        ax.set_xticks(range(len(points)), [f"{h:g}/{r}" for h, r in points], fontsize=7, rotation=45)
        ax.set(xlabel="threshold (nats) / reuse limit", ylabel=label)
    fig.subplots_adjust(wspace=0.35)
    fig.legend(*axes[0].get_legend_handles_labels(), loc="upper center", ncol=3, fontsize=8,
               bbox_to_anchor=(0.5, 1.02))  # outside the data
    if title:
        fig.suptitle(title, fontsize=10, y=1.08)
    return fig


def save_png(fig, path: Path) -> None:
    """Write `fig` to `path` as a PNG (atomically, 120 dpi) and close it."""
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
