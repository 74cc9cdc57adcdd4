"""Where DQAR's files live and how they are written and read: every data path in one place, atomic writes,
and torch files tagged with their format (the policy and the CSB cache calibration load through these)."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
DATA = REPO_ROOT / "data"
DEFAULT_MODEL = DATA / "models" / "cifar10-dit"
DEFAULT_CLASSIFIER = DATA / "models" / "cifar10-classifier" / "classifier.pt"
DEFAULT_POLICY = DATA / "policy" / "policy.pt"
DEFAULT_FORECAST_POLICY = DATA / "policy" / "forecast_policy.pt"  # the "dqar_policy" preset's
DEFAULT_CACHE_CALIBRATION = DATA / "calibration" / "cache_calibration.pt"
CIFAR10_ARCHIVE = DATA / "cifar10" / "cifar10-jpeg.tar.gz"
PROMPTS = DATA / "prompts" / "prompts.txt"  # the shipped prompt set (the benchmark's default for text models)
# the notebooks' results, each a JSON with a manifest
TRACES = DATA / "traces" / "traces.json"  # 03_traces
QUANTIZATION_RESULTS = DATA / "calibration" / "quantization.json"  # 04_quantization
POLICY_EVAL = DATA / "policy" / "policy_eval.json"  # 05_policy
FORECAST_POLICY_EVAL = DATA / "policy" / "forecast_policy_eval.json"  # 05_policy, the forecast policy
ABLATIONS = DATA / "results" / "ablations.json"  # 06_schedule_ablations
FRONT = DATA / "results" / "front.json"  # 09_forecast
FID_SEEDS = DATA / "results" / "fid_seeds.json"  # evaluation.fid_seeds; 09_forecast reads it
GPU_RESULTS = DATA / "results" / "gpu"  # 07_gpu_benchmarks


@contextlib.contextmanager
def atomic_write(path: Path | str, mode: str = "w"):
    """Write to a temporary file beside `path` and rename it into place: a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o644)
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def load_tagged(path: Path | str, fmt: str, what: str, weights_only: bool = False) -> dict:
    """A torch-saved dict carrying `"format": fmt`; a missing, corrupt or foreign file is an error naming it."""
    import torch

    path = Path(path)
    if not path.is_file() and not path.is_absolute() and (DATA / path).is_file():
        path = DATA / path  # a name under the data folder, as the presets give it
    if not path.is_file():
        raise FileNotFoundError(f"{what} file not found: {path}")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=weights_only)
    except Exception as e:  # pickle, zip and EOF errors name no file; say which
        raise ValueError(f"{what} file {path} is corrupt or truncated: {e}") from None
    tag = blob.get("format") if isinstance(blob, dict) else None
    if tag != fmt:
        raise ValueError(f"{path} is not a DQAR {what} file: format tag {tag!r}, expected {fmt!r}")
    return blob
