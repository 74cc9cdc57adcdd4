"""The explorer: a widget over replayed reuse maps (dqar_lib.fitting.replay) that works in static HTML.

`explorer_widget` precomputes one figure per point
of a (tau, snr_lo, schedule depth) grid and links the sliders to them in the browser (`jslink`), so
the rendered book reacts to the sliders with no Python kernel behind it.
"""

from __future__ import annotations

import io

from ..fitting.replay import grid_config, replay, runs
from ..method.config import DQARConfig


def _figure_png(run_rows, cfg, title: str) -> bytes:
    import matplotlib.pyplot as plt

    from . import plots

    plan = replay(run_rows, cfg)
    fig, ax = plt.subplots(figsize=(7.5, 2.4), dpi=72)
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
        title = f"reuse {s['reuse_fraction']:.2f} | error per reuse: {per_mode}"
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
