"""The project's CIFAR-10 classifier: scores class accuracy of samples and gives proxy-FID features.

A half-width ResNet-9 (the DAWNBench CIFAR-10 network), trained here on the JPEG CIFAR-10 split.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..artifacts import DATA, write_result
from ..method.files import DEFAULT_CLASSIFIER, atomic_write, load_tagged
from ..models.data import load_cifar10, to_tensor
from ..models.sampling import sample

FORMAT = "dqar-classifier-v1"


def _conv(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class _Res(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.f = nn.Sequential(_conv(c, c), _conv(c, c))

    def forward(self, x):
        return x + self.f(x)


class CifarResNet(nn.Module):
    """ResNet-9 at width `w` (64 in the original): (N, 3, 32, 32) in [-1, 1] -> (N, 10) logits."""

    def __init__(self, w: int = 24):
        super().__init__()
        self.body = nn.Sequential(
            _conv(3, w), _conv(w, 2 * w), nn.MaxPool2d(2), _Res(2 * w),  # (N, 2w, 16, 16)
            _conv(2 * w, 4 * w), nn.MaxPool2d(2),  # (N, 4w, 8, 8)
            _conv(4 * w, 8 * w), nn.MaxPool2d(2), _Res(8 * w),  # (N, 8w, 4, 4)
            nn.AdaptiveMaxPool2d(1), nn.Flatten(),  # (N, 8w)
        )
        self.head = nn.Linear(8 * w, 10, bias=False)
        self.width = w
        self.num_features = 8 * w  # torchmetrics' FID reads this

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x)) * 0.125


def _augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Random crop (reflect-pad 4) and horizontal flip, batched."""
    n = x.shape[0]
    pad = F.pad(x, (4, 4, 4, 4), mode="reflect")
    dx, dy = torch.randint(0, 9, (2,), generator=g).tolist()  # one offset per batch keeps it fast
    x = pad[:, :, dy:dy + 32, dx:dx + 32]
    flip = torch.rand(n, generator=g) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(3), x)


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 500) -> float:
    model.eval()
    correct = sum((model(x[i:i + batch]).argmax(1) == y[i:i + batch]).sum().item() for i in range(0, len(x), batch))
    return correct / len(x)


def train_classifier(path: Path | str = DATA / DEFAULT_CLASSIFIER, epochs: int = 12, batch: int = 256,
                     lr: float = 0.2, width: int = 24, seed: int = 0) -> dict:
    """Train the classifier (one-cycle SGD, label smoothing) and save it with its test accuracy (by default over
    the checkout's shipped one)."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    xtr, ytr = load_cifar10("train")
    xte, yte = load_cifar10("test")
    xtr, ytr, xte, yte = to_tensor(xtr), torch.from_numpy(ytr), to_tensor(xte), torch.from_numpy(yte)
    model = CifarResNet(width).to(memory_format=torch.channels_last)
    steps_per_epoch = math.ceil(len(xtr) / batch)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=epochs * steps_per_epoch, pct_start=0.25)
    t0, log = time.time(), []
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(len(xtr), generator=g)
        bar = tqdm(range(steps_per_epoch), desc=f"classifier epoch {epoch + 1}/{epochs}", mininterval=10)
        for i in bar:
            idx = perm[i * batch:(i + 1) * batch]
            xb = _augment(xtr[idx], g).contiguous(memory_format=torch.channels_last)
            loss = F.cross_entropy(model(xb), ytr[idx], label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        acc = evaluate(model, xte, yte)
        log.append([epoch + 1, float(loss), acc])
        print(f"epoch {epoch + 1}: loss {float(loss):.3f} test accuracy {acc:.4f}", flush=True)
    seconds = time.time() - t0
    path = Path(path)
    with atomic_write(path, "wb") as f:
        torch.save({"format": FORMAT, "width": width, "state_dict": model.state_dict(), "test_accuracy": acc}, f)
    result = {"test_accuracy": acc, "epochs": epochs, "train_seconds": seconds, "log": log,
              "parameters": sum(p.numel() for p in model.parameters())}
    write_result(path.with_name("train_log.json"), result,
                 params=dict(epochs=epochs, batch=batch, lr=lr, width=width, seed=seed))
    return result


def load_classifier(path: Path | str = DEFAULT_CLASSIFIER) -> CifarResNet:
    """A classifier file by path or data-relative name (default: the shipped one, found by `files.data_file`); a
    missing, corrupt or foreign file is an error naming it."""
    blob = load_tagged(path, FORMAT, "classifier")
    model = CifarResNet(blob["width"])
    model.load_state_dict(blob["state_dict"])
    return model.eval()


@torch.no_grad()
def class_accuracy(images: torch.Tensor, labels, classifier: nn.Module | None = None) -> float:
    """Share of images (N, 3, H, W) in [0, 1] that the classifier assigns to their label."""
    classifier = classifier if classifier is not None else load_classifier()
    labels = torch.as_tensor(labels).reshape(-1)
    if images.ndim != 4 or images.shape[0] != labels.numel():
        raise ValueError(f"images {tuple(images.shape)} and labels {tuple(labels.shape)} do not match")
    pred = classifier.eval()(images.float() * 2 - 1).argmax(1)
    return (pred == labels).float().mean().item()


def class_major(n_classes: int, per_class: int) -> list[int]:
    """Labels 0 .. n_classes - 1, each repeated per_class times in a row (the order of the sample grids)."""
    if not 1 <= n_classes <= 10 or per_class < 1:
        raise ValueError(f"need 1 <= n_classes <= 10 and per_class >= 1, got n_classes={n_classes}, "
                         f"per_class={per_class}")
    return [c for c in range(n_classes) for _ in range(per_class)]


def sample_accuracy(model: nn.Module, n_classes: int = 10, per_class: int = 8, seed: int = 0, num_steps: int = 50,
                    guidance_scale: float | None = None, classifier: nn.Module | None = None) -> float:
    """Class accuracy of per_class samples of each of the first n_classes classes, drawn with one seed.

    With the defaults (DDIM-50, the guidance recorded with the model, seed 0) this is the embedded model's bar.
    """
    labels = class_major(n_classes, per_class)
    res = sample(model, labels, num_steps=num_steps, guidance_scale=guidance_scale, seed=seed, progress=False)
    return class_accuracy(res.images, labels, classifier)


if __name__ == "__main__":
    import argparse

    p = argparse.ArgumentParser(description="Train the CIFAR-10 classifier used for accuracy and proxy FID.")
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--width", type=int, default=24)
    p.add_argument("--threads", type=int, default=0)
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    print(train_classifier(epochs=a.epochs, width=a.width))
