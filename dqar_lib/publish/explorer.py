"""The explorer: a widget over replayed reuse maps (dqar_lib.fitting.replay) that works in static HTML.

`slider_grid` reads the (tau, snr_lo, schedule depth) grid off the traces and `cache_errors` the cache modes'
round-trip errors; `explorer_widget` precomputes one figure per grid point and links the sliders to them in the
browser (`jslink`), so the rendered book reacts to the sliders with no Python kernel behind it.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np

from ..fitting.replay import grid_config, replay, runs
from ..method.config import DQARConfig
from ..method.schedule import progress

CACHE_MODES = ("fp16", "int8_tensor", "int8_channel")
"""The cache modes whose errors the explorer's figures quote."""


def slider_grid(rows: list[dict], base: DQARConfig, n_tau: int, n_snr: int,
                depths: Sequence[float] = (0.25, 0.5, 1.0), num_train_timesteps: int = 1000) -> dict[str, list[float]]:
    """The sliders' positions, read off the trace rows past `base.warmup` so that every position changes something.

    taus: `n_tau - 1` evenly spaced quantiles (10 % to 90 %) of the traced H_t, and 1.0 (the entropy gate open);
    snr_los: 0.0 (no SNR bound) and `n_snr - 1` quantiles (30 % to 90 %) of the traced SNR_t; both rounded to
    3 decimals, equal values merged, ascending. depths: the schedule's starting depths, as given.
    """
    import pandas as pd

    if n_tau < 1 or n_snr < 1:
        raise ValueError(f"n_tau={n_tau!r}, n_snr={n_snr!r} are invalid: expected at least 1 slider position each")
    late = pd.DataFrame([r for r in rows if r["H_t"] is not None
                         and progress(r["t"], num_train_timesteps) >= base.warmup])
    if late.empty:
        raise ValueError(f"no trace rows past warmup={base.warmup} carry H_t")
    taus = sorted({round(float(v), 3) for v in late.H_t.quantile(np.linspace(0.1, 0.9, n_tau - 1))} | {1.0})
    snr_los = sorted({0.0} | {round(float(v), 3) for v in late.SNR_t.quantile(np.linspace(0.3, 0.9, n_snr - 1))})
    return dict(taus=taus, snr_los=snr_los, depths=[float(d) for d in depths])


def cache_errors(errors: list[dict], modes: Sequence[str] = CACHE_MODES) -> dict[str, float]:
    """Mean relative round-trip error (rel_l2) of each cache mode over the rows of the quantization notebook's
    held-out `errors` (data/calibration/quantization.json); a mode with no rows is an error."""
    import pandas as pd

    df = pd.DataFrame(errors)
    out = {}
    for m in modes:
        sel = df[df["mode"] == m]
        if sel.empty:
            raise ValueError(f"the quantization errors hold no rows of cache mode {m!r}")
        out[m] = float(sel.rel_l2.mean())
    return out


def _figure_png(run_rows, cfg, title: str) -> bytes:
    import matplotlib.pyplot as plt

    from . import plots

    plan = replay(run_rows, cfg)
    fig, ax = plt.subplots(figsize=(8, 3.4), dpi=100)
    plots.reuse_map(ax, [dict(step=s, layer=i, reuse=bool(plan[s, i])) for s in range(plan.shape[0])
                         for i in range(plan.shape[1])], title=title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def explorer_widget(rows: list[dict], base: DQARConfig, summaries: dict[tuple, dict], quant_errors: dict[str, float],
                    show_run: tuple | None = None):
    """Sliders for tau, snr_lo and the schedule's starting depth over precomputed reuse maps.

    `summaries` is `grid_summaries` over the grid the sliders step through. Each grid point's figure shows
    the reuse map of one traced run (`show_run`, default the first), titled with the reuse fraction and
    predicted error per reuse averaged over every run, for each cache mode in `quant_errors` (its mean
    relative round-trip error). Returns an ipywidgets VBox.
    """
    import ipywidgets as w

    grouped = runs(rows)
    shown = grouped[show_run] if show_run is not None else next(iter(grouped.values()))
    axes = [sorted({k[d] for k in summaries}) for d in range(3)]  # taus, snr_los, depths

    def leaf(key):
        s = summaries[key]
        per_mode = ", ".join(f"{m} {s['error_per_reuse'] + e:.3f}" for m, e in quant_errors.items())
        title = f"reuse fraction {s['reuse_fraction']:.2f}\npredicted error per reuse (rel. L2): {per_mode}"
        return w.Image(value=_figure_png(shown, grid_config(base, *key), title), format="png")

    sliders = [w.SelectionSlider(options=[(f"{v:g}", i) for i, v in enumerate(vals)], value=0, description=name,
                                 continuous_update=True, layout=w.Layout(width="420px"))
               for name, vals in zip(("tau", "snr_lo", "depth₀"), axes)]

    def nest(key: tuple):
        """A Stack over the next axis's values, its index linked to that axis's slider in the browser."""
        d = len(key)
        if d == len(axes):
            return leaf(key)
        stack = w.Stack([nest(key + (v,)) for v in axes[d]], selected_index=0)
        w.jslink((sliders[d], "index"), (stack, "selected_index"))
        return stack

    return w.VBox([w.HBox(sliders[:2]), sliders[2], nest(())])
