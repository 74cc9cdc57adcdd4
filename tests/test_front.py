"""The front: interleaved timing of every entry, speed at equal PSNR, the entries, the forecast preset's plan."""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from dqar_lib import DQARConfig, sample, tiny_dit  # noqa: E402
from dqar_lib.evaluation.analysis import bar_point, speed_at_accuracy, speed_at_psnr  # noqa: E402
from dqar_lib.evaluation.front import forecast_variants, front_entries, preset_entry  # noqa: E402
from dqar_lib.evaluation.methods import as_method  # noqa: E402
from dqar_lib.evaluation.run_sampling import front_bench  # noqa: E402
from dqar_lib.method.rule import keep_ahead  # noqa: E402
from dqar_lib.publish import plots  # noqa: E402


def test_speed_at_psnr_interpolates_on_the_upper_front():
    df = pd.DataFrame(dict(family=["A"] * 4 + ["B"], psnr=[50.0, 42.0, 30.0, 40.0, 38.0],
                           speedup=[1.2, 1.8, 2.5, 1.5, 3.0]))
    at = speed_at_psnr(df, targets=(45.0, 35.0, 55.0))
    assert at["A"][45.0] == pytest.approx(1.2 + 0.6 * 5 / 8)  # between (50, 1.2) and (42, 1.8)
    assert at["A"][35.0] == pytest.approx(1.8 + 0.7 * 7 / 12)  # (40, 1.5) is dominated by (42, 1.8): not used
    assert at["A"][55.0] is None and at["B"][45.0] is None and at["B"][35.0] == 3.0


def test_speed_at_accuracy_is_each_familys_fastest_point_near_full_accuracy():
    df = pd.DataFrame(dict(method=["full", "a1", "a2", "b1", "c1"], family=["full", "A", "A", "B", "C"],
                           speedup=[1.0, 1.5, 2.5, 3.0, 1.2], class_accuracy=[0.80, 0.79, 0.77, 0.70, 0.82]))
    at = speed_at_accuracy(df)
    assert at == {"full": 1.0, "A": 1.5, "B": None, "C": 1.2}  # a2 and b1 lose more than 0.02
    assert speed_at_accuracy(df, acc_tol=0.05)["A"] == 2.5
    with pytest.raises(ValueError, match="'full' row"):
        speed_at_accuracy(df[df.method != "full"])


def test_bar_point_is_the_fastest_qualifying_entry_of_its_prefix():
    df = pd.DataFrame(dict(psnr=[float("inf"), 46.0, 44.0, 50.0, 42.0], speedup=[1.0, 1.9, 2.3, 2.6, 3.0],
                           class_accuracy=[0.80, 0.79, 0.81, 0.70, 0.80]),
                      index=["full", "DQAR a", "DQAR b", "DQAR c", "DQAR d"])
    assert bar_point(df) == "DQAR b"  # c misses the accuracy, d the PSNR
    assert bar_point(df, "DQAR a") == "DQAR a" and bar_point(df, min_psnr=47) is None
    assert bar_point(df, ("DQAR a", "DQAR c")) == "DQAR a"  # any of several prefixes
    with pytest.raises(ValueError, match="'full' row"):
        bar_point(df.drop(index="full"))


def test_front_bench_times_every_entry_against_the_reference():
    model = tiny_dit()
    rows = front_bench(model, [1, 2], {"full": (None, 6), "fewer": (None, 3), "always": ("always", 6)},
                       repeats=1, warmup=0, progress=False)
    by = {r["method"]: r for r in rows}
    assert by["full"]["speedup"] == 1.0 and by["full"]["psnr"] == float("inf")
    assert by["fewer"]["steps"] == 3 and by["fewer"]["psnr"] < 99 and by["always"]["reuse_fraction"] > 0
    with pytest.raises(ValueError, match="reference 'base'"):
        front_bench(model, [1], {"full": (None, 2)}, reference="base")
    with pytest.raises(ValueError, match="entry 'bad'"):
        front_bench(model, [1], {"full": (None, 2), "bad": (None,)})


def test_entries_cover_every_family_and_resolve():
    e = front_entries()
    families = {f for f, _ in e.values()}
    assert {"fewer DDIM steps", "fewer DPM-Solver steps", "DQAR forecast", "SeaCache", "MagCache", "TaylorSeer",
            "FirstBlockCache", "PAB", "cache-dit DBCache", "cache-dit DBCache+TaylorSeer",
            "DQAR change gate", "DQAR policy", "DQAR profile"} <= families
    plans = {0.5: DQARConfig.preset("forecast", forecast_order=1)}
    assert front_entries(plans=plans)["DQAR plan 0.50"] == ("DQAR fitted plan", (plans[0.5], 50))
    for _, (method, steps, *_) in e.values():
        as_method(method)  # every entry is a runnable method (or None, full compute)
        assert steps > 0
    v = forecast_variants()
    assert next(iter(v)) == "full" and len({m.serve.order for m, *_ in list(v.values())[1:]}) == 3


def test_forecast_preset_front_loads_its_computes():
    cfg = DQARConfig.preset("forecast")
    assert (cfg.granularity, cfg.serve.order, cfg.store.mode) == ("stack", 1, "delta")
    res = sample(tiny_dit(), [1, 2], num_steps=30, seed=0, dqar=cfg, progress=False)
    rows = res.controller.trace()
    reuse = [any(r["reuse"] for r in rows if r["step"] == s) for s in range(30)]
    t = {r["step"]: r["t"] for r in rows}
    first = min(s for s in range(30) if 1 - t[s] / 1000 >= cfg.warmup)  # the first step past warmup
    assert not any(reuse[:first]) and not any(reuse[-cfg.decide.end_computes:])  # warmup and the end computes
    runs, n = [], 0
    for r in reuse[first:-cfg.decide.end_computes]:
        n = n + 1 if r else 0
        runs.append(n)
    assert max(runs[:4]) <= 1 < max(runs)  # one reuse at a time early, longer streaks later


def test_keep_ahead_keeps_the_computes_before_a_reuse():
    cfg = DQARConfig.preset("forecast")
    # at progress 0.1 and 0.15 the next steps are still warmup; 0.2 is the first that may reuse
    assert keep_ahead(cfg, 3, [0.1, 0.15], 2, None) == [False, False]
    assert keep_ahead(cfg, 3, [0.15, 0.2], 2, None) == [True, True]


def test_front_plot_draws_a_line_per_family():
    df = pd.DataFrame(dict(family=["full compute", "DQAR forecast", "DQAR forecast", "SeaCache"],
                           psnr=[float("inf"), 45.0, 40.0, 43.0], speedup=[1.0, 1.5, 1.9, 2.0]))
    fig, ax = plt.subplots()
    plots.front(ax, df)
    assert len(ax.get_legend().get_texts()) == 2
    assert ax.get_xlabel().startswith("speedup") and ax.get_ylabel().startswith("PSNR")
    plt.close(fig)
    df["method"] = ["full", "f1", "f2", "sea"]
    fig, ax = plt.subplots()
    plots.front(ax, df, mark="f2")  # the starred preset: one more legend entry, at its point
    assert [t.get_text() for t in ax.get_legend().get_texts()][-1] == '"dqar" preset'
    star = next(ln for ln in ax.get_lines() if ln.get_label() == '"dqar" preset')
    assert list(star.get_xydata()[0]) == [1.9, 40.0]
    with pytest.raises(ValueError, match="'nope'"):
        plots.front(ax, df, mark="nope")
    plt.close(fig)
    # a point that a faster one of its family beats on PSNR stays off the family's line (a faint marker)
    df = pd.DataFrame(dict(family=["A", "A", "A"], psnr=[45.0, 38.0, 40.0], speedup=[1.5, 1.7, 1.9]))
    fig, ax = plt.subplots()
    plots.front(ax, df)
    line = next(ln for ln in ax.get_lines() if ln.get_label() == "A")
    assert line.get_xydata().tolist() == [[1.5, 45.0], [1.9, 40.0]]
    plt.close(fig)


def test_preset_entry_names_the_front_entry_a_forecast_preset_is():
    entries = front_entries()
    for name, fam in (("forecast", "DQAR forecast"), ("dqar", "DQAR profile")):
        family, (cfg, _) = entries[preset_entry(name)]
        assert family == fam and cfg == DQARConfig.preset(name)
    assert preset_entry("dqar") == "DQAR profile 1/2/1 at 0.2/0.9, order 2"
