"""Every plot of the book: functions that draw on a given `ax`, with one seaborn style."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns

from ..fitting.tracing import trace_matrix


def style() -> None:
    """The book's look: seaborn whitegrid, colour-blind palette, compact fonts."""
    sns.set_theme(style="whitegrid", palette="colorblind", context="notebook", font_scale=0.9)
    plt.rcParams.update({"figure.dpi": 100, "savefig.bbox": "tight"})


def reuse_map(ax, trace: list[dict], title: str = "reuse map") -> None:
    """(layer x step) heatmap: dark where the block reused, light where it recomputed."""
    m = trace_matrix(trace, "reuse").astype(float).T  # (L, S)
    sns.heatmap(m, ax=ax, cmap="Blues", vmin=0, vmax=1, cbar=False, linewidths=0.2, linecolor="white",
                xticklabels=5 if m.shape[1] > 20 else 1, yticklabels=2 if m.shape[0] > 16 else 1)
    ax.set(xlabel="denoising step", ylabel="layer (0 = shallowest)")
    ax.set_title(title, fontsize=9)
    ax.tick_params(labelsize=7, rotation=0)
    ax.invert_yaxis()


def layer_lines(ax, trace: list[dict], field: str, ylabel: str | None = None, log: bool = False) -> None:
    """One line per layer of a traced statistic over the steps."""
    m = trace_matrix(trace, field)  # (S, L)
    colors = sns.color_palette("viridis", m.shape[1])
    for i in range(m.shape[1]):
        ax.plot(np.arange(m.shape[0]), m[:, i], color=colors[i], label=f"layer {i}", lw=1.2)
    ax.set(xlabel="step", ylabel=ylabel or field, yscale="log" if log else "linear")
    if m.shape[1] <= 8:
        ax.legend(fontsize=7, ncol=2)


def step_line(ax, trace: list[dict], field: str, ylabel: str | None = None, log: bool = False) -> None:
    """A per-step statistic (the same for every layer), e.g. SNR_t or ||x_t||."""
    m = trace_matrix(trace, field)[:, 0]
    ax.plot(np.arange(len(m)), m, marker="o", ms=3)
    ax.set(xlabel="step", ylabel=ylabel or field, yscale="log" if log else "linear")


def bars(ax, values: dict[str, float], ylabel: str, fmt: str = "{:.0f}", horizontal: bool | None = None) -> None:
    """Labelled bars, the value written on each. `horizontal` (default: when there are more than eight bars or a
    label longer than twelve characters) lays them sideways, so that long names never run into each other;
    `ylabel` names the value axis either way."""
    names, vals = [str(k) for k in values], [values[k] for k in values]
    if horizontal is None:
        horizontal = len(names) > 8 or max((len(n) for n in names), default=0) > 12
    if horizontal:
        sns.barplot(y=names, x=vals, ax=ax, hue=names, legend=False, orient="h")
        for i, v in enumerate(vals):
            ax.text(v, i, " " + fmt.format(v), ha="left", va="center", fontsize=8)
        ax.set(xlabel=ylabel, ylabel=None)
        ax.tick_params(axis="y", labelsize=8)
        ax.set_xlim(right=max(vals, default=1) * 1.18 if max(vals, default=0) > 0 else None)
    else:
        sns.barplot(x=names, y=vals, ax=ax, hue=names, legend=False)
        for i, v in enumerate(vals):
            ax.text(i, v, fmt.format(v), ha="center", va="bottom", fontsize=8)
        ax.set(ylabel=ylabel)


def spread(ax, table, short: str, xlabel: str, fmt: str = "{:.2f}") -> None:
    """One row per entry of a `dqar_lib.evaluation.fid_seeds.spread` table: a dot at the median over seeds of
    `short` ("fid" or "acc") and a line from its min to its max, the median written beside it."""
    names = [str(n) for n in table.index]
    med, lo, hi = (table[f"{short}_{k}"].to_numpy(float) for k in ("median", "min", "max"))
    y = np.arange(len(names))
    colors = sns.color_palette(n_colors=len(names))
    ax.hlines(y, lo, hi, colors=colors, lw=2.5)
    ax.scatter(med, y, c=colors, s=30, zorder=3)
    for i, v in enumerate(med):
        ax.text(hi[i], i, "  " + fmt.format(v), va="center", fontsize=8)
    ax.set_yticks(y, names, fontsize=8)
    ax.invert_yaxis()
    ax.set(xlabel=xlabel)
    ax.margins(x=0.15)


def loss_curve(ax, loss, history: list[dict] | None = None) -> None:
    """A training loss curve, (k, 2) rows of (step, loss), log scale; the runs of `history` (each a dict with
    `steps` = [start, end] and a `loss` / `precision` / `cooldown_steps` description) shaded in turn."""
    loss = np.asarray(loss, dtype=float)  # (k, 2)
    ax.plot(loss[:, 0], loss[:, 1], lw=1.2)
    for i, run in enumerate(history or []):
        start, end = run["steps"]
        ax.axvspan(start, end, color="0.92" if i % 2 else "white", zorder=0)
        label = f"run {i + 1}" + (f", lr cool-down {run['cooldown_steps']}" if run.get("cooldown_steps") else "")
        ax.text((start + end) / 2, 0.97, label, transform=ax.get_xaxis_transform(), ha="center", va="top",
                fontsize=7)
    ax.set(xlabel="training step", ylabel="epsilon MSE", yscale="log", title="DiT training loss")


def image_grid(ax, images, nrow: int, title: str | None = None) -> None:
    """A grid of (N, 3, H, W) images in [0, 1], `nrow` per row."""
    x = np.asarray(images.detach().cpu().float()) if hasattr(images, "detach") else np.asarray(images)
    n, c, h, w = x.shape
    rows = -(-n // nrow)
    grid = np.ones((rows * (h + 1) + 1, nrow * (w + 1) + 1, c))
    for k in range(n):
        r, q = divmod(k, nrow)
        grid[1 + r * (h + 1):1 + r * (h + 1) + h, 1 + q * (w + 1):1 + q * (w + 1) + w] = x[k].transpose(1, 2, 0)
    ax.imshow(grid.clip(0, 1), interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(title)


def heatmap(ax, m, title: str, cbar_label: str, log: bool = False, cmap: str = "mako_r") -> None:
    """(steps, layers) matrix drawn as a (layer x step) heatmap, layer 0 at the bottom."""
    from matplotlib.colors import LogNorm

    m = np.asarray(m, dtype=float).T  # (L, S)
    norm = LogNorm(vmin=np.nanmin(m[m > 0]), vmax=np.nanmax(m)) if log else None
    sns.heatmap(m, ax=ax, cmap=cmap, norm=norm, cbar_kws={"label": cbar_label}, xticklabels=5, yticklabels=1)
    ax.set(xlabel="step", ylabel="layer", title=title)
    ax.invert_yaxis()


def scatter_rank(ax, x, y, xlabel: str, ylabel: str, logx: bool = False, logy: bool = False) -> float:
    """Scatter of y against x with Spearman's rho in the title; returns rho."""
    from scipy.stats import spearmanr

    x, y = np.asarray(x, float), np.asarray(y, float)
    ok = np.isfinite(x) & np.isfinite(y)
    rho = float(spearmanr(x[ok], y[ok]).statistic)
    ax.scatter(x[ok], y[ok], s=4, alpha=0.35)
    ax.set(xlabel=xlabel, ylabel=ylabel, xscale="log" if logx else "linear", yscale="log" if logy else "linear",
           title=f"Spearman rho = {rho:.2f}")
    return rho


def pareto(ax, df, ours: tuple[str, ...] = ("gates", "dqar", "policy", "entropy", "SNR", "schedule"), cap: float = 60.0,
           ceiling: float | None = None, highlight: str = "gates") -> None:
    """Speed vs quality, one point per method: DQAR's variants as circles, peers as squares, each its own colour,
    named in a legend beside the axes (point labels would overlap where methods crowd).

    `df` is indexed by method with columns `speedup` and `psnr` (the full-compute row is skipped); PSNR is
    capped at `cap` dB so that lossless methods stay on the plot. `highlight`: the row drawn large with an edge.
    `ceiling`: a dashed line at that speedup.
    """
    rows = df.drop(index="full", errors="ignore")
    tab20 = sns.color_palette("tab20", 20)
    colours = (tab20[0::2] + tab20[1::2]) * 2  # the ten strong colours first, then their light pairs
    for (m, r), colour in zip(rows.iterrows(), colours):
        mine = m.startswith(ours)
        ax.scatter(r.speedup, min(r.psnr, cap), s=90 if m == highlight else 40, marker="o" if mine else "s",
                   color=colour, zorder=3, edgecolor="k", linewidth=1.5 if m == highlight else 0.3, label=m)
    ax.axvline(1.0, color="k", lw=0.8)
    if ceiling is not None:
        ax.axvline(ceiling, color="k", ls="--", lw=0.8, label="attention-reuse ceiling (FLOPs)")
    ax.set(xlabel="speedup vs full compute (wall clock)", ylabel=f"PSNR vs full compute (dB, capped at {cap:.0f})")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False,
              title="circles: DQAR; squares: peers", title_fontsize=7)


def front(ax, df, family: str = "family", ours: str = "DQAR", cap: float = 60.0, mark: str | None = None,
          mark_label: str = '"dqar" preset') -> None:
    """Speed vs quality as one line per family (a method over its knob) through its upper front, its other points
    as faint markers; DQAR's families solid with circles, peers dashed with squares, fewer steps dotted. PSNR is
    capped at `cap` dB; a legend names them.
    `mark` (a value of the `method` column) is starred and labelled `mark_label`."""
    colors = plt.get_cmap("tab20").colors
    for i, (fam, g) in enumerate(df[df[family] != "full compute"].groupby(family, sort=False)):
        g = g.sort_values("speedup")
        mine, steps = fam.startswith(ours), fam.startswith("fewer")
        color, ms = colors[(2 * i) % 20 + (i // 10) % 2], 6 if mine else 4
        marker = "o" if mine else "^" if steps else "s"
        y = g.psnr.clip(upper=cap)
        best = y[::-1].cummax()[::-1]  # the best PSNR at this speed or faster
        up = y >= best  # the family's upper front: no point of it is both faster and closer
        ax.plot(g.speedup[~up], y[~up], ls="none", marker=marker, ms=ms, color=color, alpha=0.5, zorder=2)
        ax.plot(g.speedup[up], y[up], ls=":" if steps else "-" if mine else "--", marker=marker, ms=ms,
                lw=2 if mine else 1, color=color, label=fam, zorder=3 if mine else 2)
    if mark is not None:
        row = df[df.method == mark]
        if len(row) != 1:
            raise ValueError(f"mark={mark!r} names {len(row)} rows of the front; expected exactly one")
        x, y = float(row.speedup.iloc[0]), min(float(row.psnr.iloc[0]), cap)
        ax.plot([x], [y], marker="*", ms=16, color="gold", mec="k", zorder=5, ls="none", label=mark_label)
    ax.axvline(1.0, color="k", lw=0.8)
    ax.set(xlabel="speedup vs 50-step full compute (wall clock)",
           ylabel=f"PSNR vs 50-step full compute (dB, capped at {cap:.0f})")
    ax.legend(fontsize=7, loc="upper right", ncol=2)


def skip_costs(ax, rows) -> None:
    """The measured cost of skipping each step (`forecast_policy.policy_rows` rows: step, streak, cost), one line
    per streak, the median over the rows' runs; log scale."""
    med = rows.groupby(["streak", "step"]).cost.median()
    for k in sorted(rows.streak.unique()):
        ax.plot(med.loc[k].index, med.loc[k].values, label=f"streak {k}" + (" (right after a compute)" if k == 0
                                                                             else ""))
    ax.set(xlabel="step", ylabel="image RMS error of the skip", yscale="log")
    ax.legend(fontsize=8)


def knob_curve(ax, curve, point: dict, point_label: str, knob: str = "threshold") -> None:
    """PSNR against reuse fraction of a method swept over its knob (`curve`: dicts with psnr, reuse and the knob,
    written beside each point), and one reference `point` (psnr, reuse) starred."""
    x, y = [c["reuse"] for c in curve], [c["psnr"] for c in curve]
    ax.plot(x, y, "o-", label=f"swept over its {knob}")
    for c in curve:
        ax.annotate(f"{c[knob]:g}", (c["reuse"], c["psnr"]), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.plot([point["reuse"]], [point["psnr"]], "*", ms=14, label=point_label)
    ax.set(xlabel="reuse fraction", ylabel="PSNR vs full compute (dB)")
    ax.legend(fontsize=8)
