"""The learned reuse policy: a small MLP from (H_t, SNR_t, ||x_t||, t, layer) to p_reuse.

Features are built on the host for all layers of a step at once, so a step costs one tiny forward.
Fitting it from traces (`train_policy`, `trace_features`) is dqar_lib.fitting.policy_fit.
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
