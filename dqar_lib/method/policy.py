"""The learned reuse policy: a small MLP from (H_t, SNR_t, ||x_t||, t, layer) to p_reuse.

Features are built on the host for all layers of a step at once, so a step costs one tiny forward.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

FEATURES = ("H_t", "log_snr", "x_norm", "progress", "layer_frac")
FORMAT = "dqar-policy-v1"


class ReusePolicy(nn.Module):
    """MLP: (n, 5) features -> (n,) p_reuse. Well under 0.5 M parameters at the default width."""

    def __init__(self, hidden: int = 64, depth: int = 2):
        super().__init__()
        dims = [len(FEATURES)] + [hidden] * depth
        layers: list[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(a, b), nn.SiLU()]
        self.net = nn.Sequential(*layers, nn.Linear(dims[-1], 1))
        self.hidden, self.depth = hidden, depth

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(f).squeeze(-1))  # (n,)


def policy_features(H_t: list, snr_t: float | None, x_norm: float | None, s: float, num_layers: int) -> torch.Tensor:
    """(num_layers, 5) host tensor; unknown values become neutral numbers (entropy 1, log-SNR -10, norm 1)."""
    log_snr = math.log(max(snr_t, 1e-10)) if snr_t is not None else -10.0
    rows = [[1.0 if h is None else h, log_snr, 1.0 if x_norm is None else x_norm, s, i / max(1, num_layers - 1)]
            for i, h in enumerate(H_t)]
    return torch.tensor(rows, dtype=torch.float32)


def trace_features(rows: list[dict], num_layers: int, num_train_timesteps: int = 1000) -> torch.Tensor:
    """(n, 5) features of trace rows, built exactly as the controller builds them at decision time."""
    from .schedule import progress

    out = [policy_features([r["H_t"]], r["SNR_t"], r["x_norm"], progress(r["t"], num_train_timesteps), 1)[0]
           for r in rows]
    f = torch.stack(out) if out else torch.zeros(0, len(FEATURES))
    f[:, 4] = torch.tensor([r["layer"] / max(1, num_layers - 1) for r in rows])
    return f


def train_policy(f: torch.Tensor, y: torch.Tensor, hidden: int = 64, depth: int = 2, epochs: int = 300,
                 lr: float = 3e-3, seed: int = 0) -> tuple[ReusePolicy, list[float]]:
    """Fit p_reuse = P(reuse is cheap | features) by full-batch AdamW on binary cross-entropy.

    f: (n, 5) features; y: (n,) labels in {0, 1} (1: reusing this (step, layer) costs little).
    Features are standardised inside the first layer so the policy file is self-contained.
    """
    if f.ndim != 2 or f.shape[1] != len(FEATURES) or y.shape != (f.shape[0],):
        raise ValueError(f"expected features (n, {len(FEATURES)}) and labels (n,), "
                         f"got {tuple(f.shape)} and {tuple(y.shape)}")
    torch.manual_seed(seed)
    policy = ReusePolicy(hidden, depth)
    mu, sd = f.mean(0), f.std(0).clamp_min(1e-6)
    with torch.no_grad():  # fold the standardisation into the first linear layer
        first = policy.net[0]
        first_w = first.weight.clone()
        first.weight.div_(sd)
        first.bias.sub_((first_w * (mu / sd)).sum(1))
    opt = torch.optim.AdamW(policy.parameters(), lr=lr, weight_decay=1e-4)
    losses = []
    for _ in range(epochs):
        p = policy(f).clamp(1e-6, 1 - 1e-6)
        loss = torch.nn.functional.binary_cross_entropy(p, y.float())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return policy.eval(), losses


def save_policy(policy: ReusePolicy, path: Path | str, meta: dict | None = None) -> None:
    from .files import atomic_write

    blob = {"format": FORMAT, "features": FEATURES, "hidden": policy.hidden, "depth": policy.depth,
            "state_dict": policy.state_dict(), "meta": meta or {}}
    with atomic_write(path, "wb") as f:
        torch.save(blob, f)


def load_policy(path: Path | str) -> ReusePolicy:
    """Load a policy file; a missing, corrupt or foreign file is an error that names it."""
    from .files import load_tagged

    blob = load_tagged(path, FORMAT, "policy")
    if tuple(blob.get("features", ())) != FEATURES:
        raise ValueError(f"{path} is not a DQAR policy file for features {FEATURES}: it has {blob.get('features')}")
    policy = ReusePolicy(blob["hidden"], blob["depth"])
    policy.load_state_dict(blob["state_dict"])
    return policy.eval()
