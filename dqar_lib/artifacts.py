"""Results under the checkout's data/: where the notebooks write them, and JSON files that carry a manifest
(device, versions, commit, parameters, date). The shipped files the library loads are found by
`dqar_lib.method.files.data_file`; the paths here are the repository's, for the notebooks, the book and the CLIs."""

from __future__ import annotations

import datetime as _dt
import functools
import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

from .method.files import atomic_write

REPO_ROOT = Path(__file__).resolve().parents[1]  # the checkout (an installed package's is site-packages: no data/)
DATA = REPO_ROOT / "data"  # the checkout's data/: the notebooks write here, the shipped files included
# the notebooks' results, each a JSON with a manifest
TRACES = DATA / "traces" / "traces.json"  # 03_traces
QUANTIZATION_RESULTS = DATA / "calibration" / "quantization.json"  # 04_quantization
POLICY_EVAL = DATA / "policy" / "policy_eval.json"  # 05_policy
FORECAST_POLICY_EVAL = DATA / "policy" / "forecast_policy_eval.json"  # 05_policy, the forecast policy
ABLATIONS = DATA / "results" / "ablations.json"  # 06_schedule_ablations
FRONT = DATA / "results" / "front.json"  # 09_forecast
FID_SEEDS = DATA / "results" / "fid_seeds.json"  # evaluation.fid_seeds; 09_forecast reads it
GPU_RESULTS = DATA / "results" / "gpu"  # 07_gpu_benchmarks
CIFAR10_ARCHIVE = DATA / "cifar10" / "cifar10-jpeg.tar.gz"  # models.data (checked by its SHA-256)


def git_commit() -> str:
    """HEAD's commit ("-dirty" with uncommitted changes to tracked files); where the package is not in a git
    checkout (an installed wheel, a copy of the tree on another machine), the DQAR_COMMIT environment variable,
    else "unknown"."""
    fallback = os.environ.get("DQAR_COMMIT", "unknown")
    if not (REPO_ROOT / ".git").exists():  # not git's answer for some folder above an installed package
        return fallback
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "") if out.returncode == 0 else fallback
    except (OSError, subprocess.SubprocessError):
        return fallback


@functools.cache
def run_commit() -> str:
    """The commit the run started from: `git_commit()` at this process's first call, the same answer after, so a
    result written at the end of a long run names the code it started from, not a commit made while it ran.
    A run marks its start by calling it (the notebooks through `publish.notebook.check_parameters`, the
    command-line mains first thing); `manifest` calls it too, so a run that did not mark its start names the
    commit of its first result. Nothing runs git at import."""
    return git_commit()


def device_name(device: str | None = None) -> str:
    import torch

    if device is not None and str(device).startswith("cuda") or device is None and torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def manifest(params: dict[str, Any] | None = None, device: str | None = None) -> dict[str, Any]:
    """Where a result came from: device, versions, the commit the run started from (`run_commit()`), parameters,
    date."""
    import diffusers
    import torch

    return {
        "device": device_name(device),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "python": platform.python_version(),
        "commit": run_commit(),
        "params": params or {},
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def write_result(path: Path | str, result: dict[str, Any], params: dict[str, Any] | None = None,
                 device: str | None = None) -> Path:
    """Write `{"manifest": ..., "result": ...}` atomically as JSON."""
    path = Path(path)
    with atomic_write(path) as f:
        json.dump({"manifest": manifest(params, device), "result": result}, f, indent=1, default=float)
    return path


def read_result(path: Path | str) -> dict[str, Any]:
    """Read a result written by `write_result`; a missing manifest or a corrupt file is an error naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"result file not found: {path}")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON (corrupt or truncated): {e}") from None
    if not isinstance(data, dict) or "manifest" not in data or "result" not in data:
        raise ValueError(f"{path} carries no manifest: expected keys 'manifest' and 'result'")
    return data
