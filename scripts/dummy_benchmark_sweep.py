"""The reference scaffold's sweep, on the embedded CIFAR-10 DiT (offline): baseline, static and DQAR over entropy
thresholds x reuse limits; writes dummy_benchmark_sweep.json (with a manifest) and dummy_benchmark_sweep.png.

    python scripts/dummy_benchmark_sweep.py --thresholds 1.5,3.0,4.0 --reuse-limits 2,4,6 --dqar-max-gap 6 --runs 5

Thresholds are raw attention entropy in nats, as the scaffold gives them; DQAR's gate takes tau = H / log N, N the
model's tokens (64 here, log N = 4.16 nats), and a threshold above log N is refused naming the bound. A reuse limit
is DQAR's cap on reuses in a row, at most --dqar-max-gap - 1. The mapping in full: dqar_lib.evaluation.threshold_sweep.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout's dqar_lib, installed or not

from dqar_lib import load_model  # noqa: E402
from dqar_lib.artifacts import run_commit, write_result  # noqa: E402
from dqar_lib.evaluation.cli_args import CommaList  # noqa: E402
from dqar_lib.evaluation.threshold_sweep import threshold_sweep  # noqa: E402
from dqar_lib.publish.benchmark_plots import save_png, threshold_sweep_figure  # noqa: E402


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python scripts/dummy_benchmark_sweep.py", description=__doc__.splitlines()[0])
    a = p.add_argument
    a("--thresholds", action=CommaList, kind=float, default=[1.5, 3.0, 4.0], help="entropy thresholds in nats")
    a("--reuse-limits", action=CommaList, kind=int, default=[2, 4, 6], help="DQAR's most reuses in a row")
    a("--dqar-max-gap", type=int, default=6, help="a block computes at least once every this many steps")
    a("--runs", type=int, default=5, help="timed runs per configuration (after one warm-up)")
    a("--steps", type=int, default=20, help="DDIM steps per run")
    a("--labels", action=CommaList, kind=int, default=[0, 1, 2, 3], help="CIFAR-10 class ids, one image each")
    a("--data-path", type=Path, default=Path("dummy_benchmark_sweep.json"))
    a("--plot-path", type=Path, default=Path("dummy_benchmark_sweep.png"))
    a("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv=None) -> Path:
    p = parser()
    a = p.parse_args(argv)
    run_commit()  # the run starts: its results name this commit
    model = load_model()
    try:
        records = threshold_sweep(model, a.thresholds, a.reuse_limits, a.dqar_max_gap, a.runs, a.steps, a.labels,
                                  progress=not a.quiet)
    except ValueError as e:
        p.error(str(e))
    params = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()}
    write_result(a.data_path, dict(model="embedded CIFAR-10 DiT", records=records), params, "cpu")
    save_png(threshold_sweep_figure(records, f"embedded CIFAR-10 DiT, DDIM-{a.steps}, {len(a.labels)} images"),
             a.plot_path)
    print(f"wrote {a.data_path} and {a.plot_path}", file=sys.stderr)
    return a.data_path


if __name__ == "__main__":
    main()
