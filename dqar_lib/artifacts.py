"""Artifacts under data/: atomic writes and JSON results that carry a manifest."""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import platform
import subprocess
import tempfile
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
DATA = REPO_ROOT / "data"


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


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "") if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def device_name(device: str | None = None) -> str:
    import torch

    if device is not None and str(device).startswith("cuda") or device is None and torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def manifest(params: dict[str, Any] | None = None, device: str | None = None) -> dict[str, Any]:
    """Where a result came from: device, versions, commit, parameters, date."""
    import diffusers
    import torch

    return {
        "device": device_name(device),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "python": platform.python_version(),
        "commit": git_commit(),
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


def load_tagged(path: Path | str, fmt: str, what: str, weights_only: bool = False) -> dict:
    """A torch-saved dict carrying `"format": fmt`; a missing, corrupt or foreign file is an error naming it."""
    import torch

    path = Path(path)
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
