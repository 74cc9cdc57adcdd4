"""Distribution quality over seeds (evaluation.fid_seeds): rows per (seed, entry), resume, spread, bad entries."""

import pytest
import torch

from dqar_lib.artifacts import read_result
from dqar_lib.evaluation import fid_seeds


def _fake_quality(calls):
    def quality(model, method, reference, steps, scheduler, per_class, seed, classifier, chunk):
        calls.append((method, steps, scheduler, seed))
        return dict(class_accuracy=0.5 + seed / 1000, proxy_fid=float(seed + steps), quality_n=10 * per_class)
    return quality


def test_rows_are_seed_major_and_done_pairs_are_not_sampled_again(monkeypatch):
    calls = []
    monkeypatch.setattr(fid_seeds, "distribution_quality", _fake_quality(calls))
    entries = {"full": (None, 50), "DPM-Solver-20": (None, 20, "dpm")}
    done = [dict(entry="full", seed=1, class_accuracy=0.9, proxy_fid=3.0, quality_n=20)]
    seen = []
    rows = fid_seeds.quality_rows(None, entries, torch.zeros(2, 3, 4, 4), 2, [1, 2], done, seen.append,
                                  classifier=object(), progress=False)
    assert [(r["entry"], r["seed"]) for r in rows] == [("full", 1), ("DPM-Solver-20", 1), ("full", 2),
                                                       ("DPM-Solver-20", 2)]
    assert calls == [(None, 20, "dpm", 1), (None, 50, "ddim", 2), (None, 20, "dpm", 2)]
    assert rows[0] is done[0] and len(seen) == 3
    s = fid_seeds.spread(rows)
    assert list(s.index) == ["full", "DPM-Solver-20"] and (s.seeds == 2).all()
    assert s.loc["full", "fid_min"] == 3.0 and s.loc["full", "fid_max"] == 52.0 and s.loc["full", "fid_median"] == 27.5
    assert s.loc["DPM-Solver-20", "acc_median"] == pytest.approx(0.5015)


def test_main_writes_a_manifest_and_resumes(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(fid_seeds, "distribution_quality", _fake_quality(calls))
    monkeypatch.setattr("dqar_lib.models.data.load_cifar10", lambda split: (torch.zeros(2, 4, 4, 3).byte().numpy(),
                                                                             None))
    monkeypatch.setattr("dqar_lib.evaluation.classifier.load_classifier", lambda: object())
    out = tmp_path / "q.json"
    argv = ["--entries", "full", "DDIM-20", "--per-class", "1", "--seeds", "3", "--out", str(out), "--quiet"]
    fid_seeds.main(argv)
    res = read_result(out)
    assert res["result"]["complete"] and len(res["result"]["rows"]) == 2 and res["manifest"]["params"]["seeds"] == [3]
    fid_seeds.main(argv[:-4] + ["3", "4", "--out", str(out), "--quiet"])  # one more seed: its rows only
    fid_seeds.main(argv[:-4] + ["3", "4", "--out", str(out), "--quiet"])  # the same again: nothing sampled
    assert len(calls) == 2 + 2 and len(read_result(out)["result"]["rows"]) == 4
    with pytest.raises(SystemExit):  # other samples: refused (tests/test_faults_cli.py), or all again on --restart
        fid_seeds.main(argv[:4] + ["2", "--seeds", "3", "--out", str(out), "--quiet"])
    fid_seeds.main(argv[:4] + ["2", "--seeds", "3", "--out", str(out), "--quiet", "--restart"])
    assert len(calls) == 4 + 2 and len(read_result(out)["result"]["rows"]) == 2


def test_unknown_entries_are_named(tmp_path, capsys):
    with pytest.raises(SystemExit):
        fid_seeds.main(["--entries", "full", "SeaCache 9", "--out", str(tmp_path / "q.json")])
    assert "unknown entries ['SeaCache 9']" in capsys.readouterr().err


def test_chunks_keep_the_label_order_on_strided_seeds(monkeypatch):
    from types import SimpleNamespace

    from dqar_lib.evaluation import classifier, front, metrics

    calls = []

    def run(model, method, labels, num_steps, scheduler, seed, progress):
        calls.append((list(labels), seed))
        return SimpleNamespace(images=torch.tensor(labels, dtype=torch.float).view(-1, 1, 1, 1).expand(-1, 3, 2, 2))

    got = {}
    monkeypatch.setattr(front, "run_method", run)
    monkeypatch.setattr(classifier, "class_accuracy", lambda imgs, labels, c: got.update(imgs=imgs, labels=labels))
    monkeypatch.setattr(metrics, "proxy_fid", lambda imgs, ref, c: 0.0)
    q = front.distribution_quality(None, None, None, 5, "ddim", per_class=2, seed=7, classifier=object(), chunk=8)
    assert [s for _, s in calls] == [7, 7 + 7919, 7 + 2 * 7919] and [len(lab) for lab, _ in calls] == [8, 8, 4]
    assert got["imgs"][:, 0, 0, 0].tolist() == got["labels"] == [c for c in range(10) for _ in range(2)]
    assert q["quality_n"] == 20


def test_spread_plot_draws_each_entrys_range_over_seeds():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from dqar_lib.publish import plots

    fids = {"full": (60.0, 62.0, 61.0), "DDIM-20": (66.0, 70.0, 67.0)}
    rows = [dict(entry=e, seed=s, class_accuracy=0.8, proxy_fid=f, quality_n=1000)
            for e, by_seed in fids.items() for s, f in zip((1, 2, 3), by_seed)]
    table = fid_seeds.spread(rows)
    assert table.loc["DDIM-20", ["fid_median", "fid_min", "fid_max"]].tolist() == [67.0, 66.0, 70.0]
    assert table.loc["full", "seeds"] == 3 and table.loc["full", "samples"] == 1000
    fig, ax = plt.subplots()
    plots.spread(ax, table, "fid", "proxy FID")
    (lines,) = ax.collections[:1]
    assert [tuple(seg[:, 0]) for seg in lines.get_segments()] == [(60.0, 62.0), (66.0, 70.0)]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["full", "DDIM-20"]
    plt.close(fig)


def test_reading_says_where_the_preset_and_fewer_steps_stand_against_full_compute():
    fids = {"full": (43.0, 43.2), "DQAR forecast 1->5": (43.1, 43.5), "DDIM-20": (46.8, 47.2),
            "DPM-Solver-20": (41.9, 42.4)}
    rows = [dict(entry=e, seed=s, class_accuracy=0.85, proxy_fid=f, quality_n=1000)
            for e, by_seed in fids.items() for s, f in zip((1, 2), by_seed)]
    table = fid_seeds.spread(rows)
    assert fid_seeds.apart(table, "DDIM-20", "full") and not fid_seeds.apart(table, "DQAR forecast 1->5", "full")
    text = fid_seeds.reading(table, "DQAR forecast 1->5")
    assert "+0.20 from full compute's, its seed range overlapping" in text
    assert "DDIM-20's is +3.90 (outside the ranges)" in text and "DPM-Solver-20's -0.95: on this model" in text
    rows = [dict(r, proxy_fid=r["proxy_fid"] + 5) if r["entry"] == "DPM-Solver-20" else r for r in rows]
    assert fid_seeds.reading(fid_seeds.spread(rows), "DQAR forecast 1->5").endswith("DPM-Solver-20's +4.05.")
