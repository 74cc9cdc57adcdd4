"""Quality beside every speed figure: PSNR / SSIM against full compute, and a proxy FID.

Proxy FID uses the project's CIFAR-10 classifier features, so it is labelled "proxy FID (CIFAR classifier
features)" wherever it appears: it is not comparable with Inception FID.
"""

from __future__ import annotations

import torch
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure
from torchmetrics.image.fid import FrechetInceptionDistance

PROXY_FID_LABEL = "proxy FID (CIFAR classifier features)"


def _check_pair(x: torch.Tensor, ref: torch.Tensor) -> None:
    if x.shape != ref.shape:
        raise ValueError(f"images {tuple(x.shape)} and reference {tuple(ref.shape)} differ in shape")
    if x.ndim != 4:
        raise ValueError(f"expected (N, C, H, W) images, got shape {tuple(x.shape)}")


def psnr(x: torch.Tensor, ref: torch.Tensor) -> float:
    """PSNR in dB of images in [0, 1] against the full-compute reference from the same seed (per image, mean).

    Identical images give +inf.
    """
    _check_pair(x, ref)
    vals = [peak_signal_noise_ratio(a[None].float(), b[None].float(), data_range=1.0) for a, b in zip(x, ref)]
    return torch.stack(vals).mean().item()


def ssim(x: torch.Tensor, ref: torch.Tensor) -> float:
    """Mean SSIM of images in [0, 1] against the reference (Gaussian window 7 suits 32x32 images)."""
    _check_pair(x, ref)
    return structural_similarity_index_measure(x.float(), ref.float(), data_range=1.0, kernel_size=7).item()


class _Features(torch.nn.Module):
    """Classifier features for torchmetrics' FID: uint8 or [0, 1] images in, (N, F) features out."""

    def __init__(self, classifier: torch.nn.Module):
        super().__init__()
        self.classifier = classifier.eval()
        self.num_features = classifier.num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
        return self.classifier.features(x * 2 - 1).double()


@torch.no_grad()
def proxy_fid(images: torch.Tensor, reference: torch.Tensor, classifier: torch.nn.Module | None = None,
              batch: int = 500) -> float:
    """Fréchet distance between classifier features of `images` and of `reference` (both (N, 3, H, W) in [0, 1])."""
    if classifier is None:
        from .classifier import load_classifier

        classifier = load_classifier()
    if len(images) < 2 or len(reference) < 2:
        raise ValueError(f"proxy FID needs at least 2 images on each side, got {len(images)} and {len(reference)}")
    fid = FrechetInceptionDistance(feature=_Features(classifier), normalize=True)
    for i in range(0, len(reference), batch):
        fid.update(reference[i:i + batch].float(), real=True)
    for i in range(0, len(images), batch):
        fid.update(images[i:i + batch].float(), real=False)
    return fid.compute().item()
