"""Where DQAR's shipped files are found and how files are written and read: the one data lookup, atomic writes,
and torch files tagged with their format (the policies and the CSB cache calibration load through these).

The shipped files (the embedded model and its classifier, the policies, the cache calibration, the prompt set) are
named relative to a data folder laid out like the repository's `data/`, e.g. `"policy/policy.pt"`. `data_file`
looks a name up in this order and returns the first that exists:

    1. $DQAR_DATA              a folder of your own, laid out like data/ (set it to use other files)
    2. the installed package   dqar_lib/_data/, the shipped files inside the wheel (`pip install`)
    3. the checkout's data/    beside dqar_lib/ in a git clone (an editable install, or running from the clone)

Where the notebooks write their results (the checkout's data/) is `dqar_lib.artifacts`'s business, not this one.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

DATA_ENV = "DQAR_DATA"
PACKAGE_DATA = Path(__file__).resolve().parents[1] / "_data"  # the wheel's copy (setup.py maps it onto data/)
CHECKOUT_DATA = Path(__file__).resolve().parents[2] / "data"

# the shipped files, as data-relative names (pass them to data_file, or anywhere a file is loaded)
DEFAULT_MODEL = "models/cifar10-dit"
DEFAULT_CLASSIFIER = "models/cifar10-classifier/classifier.pt"
DEFAULT_POLICY = "policy/policy.pt"  # the "policy" preset's
DEFAULT_FORECAST_POLICY = "policy/forecast_policy.pt"  # the "dqar_policy" preset's
DEFAULT_CACHE_CALIBRATION = "calibration/cache_calibration.pt"  # the "dqar_csb" preset's
PROMPTS = "prompts/prompts.txt"  # the shipped prompt set (the benchmark's default for text models)


def data_dirs() -> list[Path]:
    """The folders `data_file` looks in, in order: $DQAR_DATA (when set), the installed package's data, the
    checkout's data/."""
    env = os.environ.get(DATA_ENV)
    return ([Path(env).expanduser()] if env else []) + [PACKAGE_DATA, CHECKOUT_DATA]


def data_file(name: str) -> Path:
    """The shipped file or folder `name` (data-relative, e.g. "policy/policy.pt" or "models/cifar10-dit") in the
    first data folder that has it; found nowhere, a FileNotFoundError naming it and every place looked."""
    tried = [d / name for d in data_dirs()]
    for path in tried:
        if path.exists():
            return path
    raise FileNotFoundError(f"DQAR data file {name!r} not found; looked in " + ", ".join(map(str, tried))
                            + f" (set {DATA_ENV} to a folder laid out like data/)")


def resolve(path: Path | str) -> Path:
    """A file given by path or by data-relative name: an existing path as given; else a path under some `data/`
    folder (an absolute path stored by an older run, in another checkout) by its name below that folder, where the
    lookup has it; else an absolute path as given, a relative one as a name through `data_file`."""
    p = Path(path).expanduser()
    if p.exists():
        return p
    below = [k for k, part in enumerate(p.parts[:-1]) if part == "data"]
    if below:
        with contextlib.suppress(FileNotFoundError):
            return data_file("/".join(p.parts[below[-1] + 1:]))
    return p if p.is_absolute() else data_file(p.as_posix())


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
    """A torch-saved dict carrying `"format": fmt`, from a path or a data-relative name (`resolve`); a missing,
    corrupt or foreign file is an error naming it."""
    import torch

    try:
        path = resolve(path)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{what} file not found: {e}") from None
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
