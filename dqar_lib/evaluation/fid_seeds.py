"""Distribution quality on many samples and over seeds: class accuracy and proxy FID of chosen front entries.

    python -m dqar_lib.evaluation.fid_seeds --entries full "DQAR profile 1/2/1 at 0.2/0.9, order 2" DPM-Solver-20 \
        --per-class 100 --seeds 100 101 102            # writes data/results/fid_seeds.json

The front (notebook 09) measures every entry on 100 samples and one seed; this measures a few entries on
`10 * per_class` samples (class-major labels, 100 a sampling call, `front.distribution_quality`) for each
seed, against the CIFAR-10 test set. Entries are named as in `front.front_entries` (fitted plans need a fit and
are not among them). The file (a manifest and one row per (seed, entry)) is rewritten after each row; a run at the
same samples, steps and chunk resumes from it (more seeds or entries add rows), a run at others is refused unless
--restart; `spread` summarises the rows per entry.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..artifacts import FID_SEEDS, read_result, run_commit, write_result
from .front import distribution_quality, front_entries


def quality_rows(model, entries: dict[str, tuple], reference: torch.Tensor, per_class: int, seeds: list[int],
                 done: list[dict] | None = None, on_row=None, classifier=None, chunk: int | None = 100,
                 progress: bool = True) -> list[dict]:
    """Rows (entry, seed, class_accuracy, proxy_fid, quality_n) for every seed x entry, seed-major, so that an
    interrupted run holds whole seeds first; pairs already in `done` are kept and not sampled again. Each run
    samples `chunk` labels a call (`distribution_quality`)."""
    from .classifier import load_classifier

    classifier = classifier if classifier is not None else load_classifier()
    rows = list(done or [])
    have = {(r["entry"], r["seed"]) for r in rows}
    todo = [(s, n) for s in seeds for n in entries if (n, s) not in have]
    for seed, name in tqdm(todo, desc="quality", disable=not progress):
        method, steps, *sched = entries[name]
        q = distribution_quality(model, method, reference, steps, sched[0] if sched else "ddim", per_class, seed,
                                 classifier, chunk)
        rows.append(dict(entry=name, seed=seed, **q))
        if on_row is not None:
            on_row(rows)
    return rows


def spread(rows: list[dict]):
    """Per entry: seeds, samples per seed, median / min / max of class accuracy and proxy FID over the seeds."""
    import pandas as pd

    df = pd.DataFrame(rows)
    g = df.groupby("entry", sort=False)
    out = pd.DataFrame({"seeds": g.seed.nunique(), "samples": g.quality_n.first()})
    for col, short in (("class_accuracy", "acc"), ("proxy_fid", "fid")):
        out[f"{short}_median"], out[f"{short}_min"], out[f"{short}_max"] = (g[col].median(), g[col].min(),
                                                                            g[col].max())
    return out


def apart(table, a: str, b: str) -> bool:
    """Whether entries a and b of a `spread` table have proxy-FID ranges over seeds that do not overlap."""
    return bool(table.loc[a].fid_min > table.loc[b].fid_max or table.loc[b].fid_min > table.loc[a].fid_max)


def reading(table, ours: str, label: str = 'The "dqar" preset', full: str = "full", fewer: str = "DDIM-20",
            solver: str = "DPM-Solver-20") -> str:
    """What a `spread` table says of entry `ours` (named `label` in the text; by default the "dqar" preset's entry)
    against full compute, fewer DDIM steps and DPM-Solver, in one or two sentences (each entry's median FID minus
    full compute's)."""
    fid = table.fid_median
    text = (f"{label}'s median proxy FID is {fid[ours] - fid[full]:+.2f} from full compute's, its seed "
            f"range {'apart from' if apart(table, ours, full) else 'overlapping'} full compute's; {fewer}'s is "
            f"{fid[fewer] - fid[full]:+.2f} ({'outside' if apart(table, fewer, full) else 'inside'} the ranges), "
            f"and {solver}'s {fid[solver] - fid[full]:+.2f}")
    if fid[solver] < fid[full]:
        return text + (f": on this model {solver} lands closer to the test images than full compute, so the "
                       "distribution alone gives no reason to prefer a cache over it.")
    return text + "."


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m dqar_lib.evaluation.fid_seeds", description=__doc__.splitlines()[0])
    p.add_argument("--entries", nargs="+", required=True, help="front entries, e.g. full 'DQAR forecast 1->5'")
    p.add_argument("--per-class", type=int, default=100, help="samples per class and seed (10 classes)")
    p.add_argument("--seeds", type=int, nargs="+", default=[100, 101, 102])
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--chunk", type=int, default=100, help="labels per sampling call")
    p.add_argument("--out", type=Path, default=FID_SEEDS, help=f"default {FID_SEEDS.relative_to(FID_SEEDS.parents[2])}")
    p.add_argument("--restart", action="store_true", help="replace --out's rows even if they were made with other "
                   "--per-class, --steps or --chunk (without it such a file is refused, not resumed)")
    p.add_argument("--quiet", action="store_true")
    return p


RESUME_KEYS = ("per_class", "steps", "chunk")
"""The parameters a resumed run must share with the file's (its rows are then the same run's); more entries or
seeds add rows."""


def _flags(params: dict, keys) -> str:
    return ", ".join(f"--{k.replace('_', '-')} {params.get(k)}" for k in keys)


def main(argv: list[str] | None = None) -> Path:
    p = parser()
    a = p.parse_args(argv)
    run_commit()  # the run starts: its results name this commit
    known = {n: e for n, (_, e) in front_entries(a.steps).items()}
    bad = [n for n in a.entries if n not in known]
    if bad:
        p.error(f"unknown entries {bad}; known: {', '.join(known)}")
    if a.per_class < 1 or a.chunk < 1 or any(s < 0 for s in a.seeds):
        p.error(f"--per-class and --chunk must be >= 1 and seeds >= 0, got {a.per_class}, {a.chunk} and {a.seeds}")
    from ..models.data import fid_reference
    from ..models.zoo import load_model

    params = dict(entries=a.entries, per_class=a.per_class, seeds=a.seeds, steps=a.steps, chunk=a.chunk,
                  threads=torch.get_num_threads())
    done, kept, kept_complete = [], [], True
    if a.out.is_file() and not a.restart:  # resume: the rows of the same run, for the entries and seeds asked
        old = read_result(a.out)
        have = old["manifest"]["params"]
        differ = [k for k in RESUME_KEYS if have.get(k) != params[k]]
        if differ:
            p.error(f"{a.out} holds a run made with {_flags(have, differ)}, not {_flags(params, differ)}: its rows "
                    "are not this run's; give another --out, or --restart to replace it")
        asked = [r["entry"] in a.entries and r["seed"] in a.seeds for r in old["result"]["rows"]]
        done = [r for r, ask in zip(old["result"]["rows"], asked) if ask]
        kept = [r for r, ask in zip(old["result"]["rows"], asked) if not ask]  # other entries and seeds stay
        kept_complete = bool(old["result"].get("complete"))
        params.update(entries=list(dict.fromkeys(have.get("entries", []) + a.entries)),
                      seeds=sorted(set(have.get("seeds", [])) | set(a.seeds)))
    reference = fid_reference()  # (10000, 3, 32, 32)
    want = {n: known[n] for n in a.entries}

    def write(rows, complete=False):  # the file keeps what it held for entries and seeds this run was not asked for
        write_result(a.out, dict(rows=kept + rows, complete=complete and kept_complete), params=params)

    rows = quality_rows(load_model(), want, reference, a.per_class, a.seeds, done, write, chunk=a.chunk,
                        progress=not a.quiet)
    write(rows, complete=True)
    print(spread(kept + rows).round(3).to_string())
    return a.out


if __name__ == "__main__":
    main()
