"""Results under data/: JSON files that carry a manifest (device, versions, commit, parameters, date)."""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

from .method.files import REPO_ROOT, atomic_write


def git_commit() -> str:
    """HEAD's commit ("-dirty" with uncommitted changes to tracked files); where there is no git checkout (a copy
    of the tree on another machine), the DQAR_COMMIT environment variable, else "unknown"."""
    fallback = os.environ.get("DQAR_COMMIT", "unknown")
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "") if out.returncode == 0 else fallback
    except (OSError, subprocess.SubprocessError):
        return fallback


RUN_COMMIT = git_commit()
"""The commit when this process imported dqar_lib.artifacts: a result written at the end of a long run names the
code it started from, not a commit made while it ran."""


def device_name(device: str | None = None) -> str:
    import torch

    if device is not None and str(device).startswith("cuda") or device is None and torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def manifest(params: dict[str, Any] | None = None, device: str | None = None) -> dict[str, Any]:
    """Where a result came from: device, versions, the commit the run started from (`RUN_COMMIT`), parameters,
    date."""
    import diffusers
    import torch

    return {
        "device": device_name(device),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "python": platform.python_version(),
        "commit": RUN_COMMIT,
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
