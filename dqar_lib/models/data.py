"""CIFAR-10 as shipped in data/cifar10: checked, decoded once, cached as .npz."""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path

import numpy as np
import torch

from ..artifacts import CIFAR10_ARCHIVE, REPO_ROOT
from ..method.files import atomic_write

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
ARCHIVE = CIFAR10_ARCHIVE
SHA256 = "b8d22658b5a1be7a9bf0e21e1a989e0240061a7667cf74b19e5ef1918c6cfb66"
CACHE_DIR = REPO_ROOT / ".cache"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _decode(archive: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image

    xs, ys = [], []
    with tarfile.open(archive) as tf:
        for m in tf:
            if m.isfile() and m.name.startswith(split + "/"):
                xs.append(np.asarray(Image.open(io.BytesIO(tf.extractfile(m).read())).convert("RGB")))
                ys.append(CLASSES.index(m.name.split("/")[1]))
    return np.stack(xs), np.asarray(ys, dtype=np.int64)  # (N, 32, 32, 3) uint8, (N,)


def load_cifar10(split: str = "train", archive: Path | str = ARCHIVE) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 32, 32, 3) uint8 and labels (N,) of one split; the archive's SHA256 is checked once."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    archive = Path(archive)
    if not archive.is_file():
        raise FileNotFoundError(f"CIFAR-10 archive not found: {archive}")
    cache = CACHE_DIR / f"cifar10-{split}.npz"
    if cache.is_file():
        with np.load(cache) as z:
            return z["x"], z["y"]
    digest = _sha256(archive)
    if archive.resolve() == ARCHIVE.resolve() and digest != SHA256:
        raise ValueError(f"{archive} has SHA256 {digest}, expected {SHA256}: the file is corrupt or truncated")
    x, y = _decode(archive, split)
    CACHE_DIR.mkdir(exist_ok=True)
    with atomic_write(cache, "wb") as f:
        np.savez(f, x=x, y=y)
    return x, y


def fid_reference(split: str = "test") -> torch.Tensor:
    """The CIFAR-10 images that proxy FID compares samples against: float32 (N, 3, 32, 32) in [0, 1]."""
    x, _ = load_cifar10(split)  # (N, 32, 32, 3) uint8
    return torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255


def to_tensor(x: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float32 (N, 3, H, W) in [-1, 1]."""
    return torch.from_numpy(x).permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)
