"""The learned reuse policy: a small MLP from a step's signals to p_reuse.

The signals (`FEATURES`) are H_t, log SNR_t, ||x_t||, the progress t, the layer's depth, the latent's relative L1
change over the last step (x_change) and the layer's reuse streak so far. A policy reads a subset of them (its
`features`, stored in its file): the attention-reuse policy of notebooks/05 reads the first five, the forecast
policy what its ablation keeps. Features are built on the host for all layers of a step at once, so a step costs
one tiny forward. Fitting: dqar_lib.fitting.policy_fit (attention outputs), dqar_lib.fitting.forecast_policy
(whole-stack forecast reuse).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

FEATURES = ("H_t", "log_snr", "x_norm", "progress", "layer_frac", "x_change", "streak")
"""Every signal a policy may read, in the column order of `policy_features`."""
ATTN_FEATURES = FEATURES[:5]
"""What the attention-reuse policy reads (the proposal's signals)."""
FORMAT = "dqar-policy-v1"


class ReusePolicy(nn.Module):
    """MLP: (n, len(FEATURES)) features -> (n,) p_reuse, reading only the columns of its `features`.
    Well under 0.5 M parameters at the default width."""

    def __init__(self, hidden: int = 64, depth: int = 2, features: tuple[str, ...] = ATTN_FEATURES):
        super().__init__()
        unknown = [f for f in features if f not in FEATURES]
        if unknown or not features or len(set(features)) != len(features):
            raise ValueError(f"policy features {tuple(features)} are invalid: expected distinct names from {FEATURES}")
        self.features = tuple(features)
        self.register_buffer("cols", torch.tensor([FEATURES.index(f) for f in self.features]), persistent=False)
        dims = [len(self.features)] + [hidden] * depth
        layers: list[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(a, b), nn.SiLU()]
        self.net = nn.Sequential(*layers, nn.Linear(dims[-1], 1))
        self.hidden, self.depth = hidden, depth

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        if f.ndim != 2 or f.shape[1] != len(FEATURES):
            raise ValueError(f"expected features (n, {len(FEATURES)}) in the order {FEATURES}, got {tuple(f.shape)}")
        return torch.sigmoid(self.net(f[:, self.cols]).squeeze(-1))  # (n,)


def policy_features(H_t: list, snr_t: float | None, x_norm: float | None, s: float, num_layers: int,
                    x_change: float | None = None, streaks: list[int] | None = None) -> torch.Tensor:
    """(num_layers, len(FEATURES)) host tensor; unknown values (None or NaN) become neutral numbers (entropy 1,
    log-SNR -10, norm 1, change 0, streak 0)."""
    log_snr = math.log(max(snr_t, 1e-10)) if _known(snr_t) else -10.0
    d = x_change if _known(x_change) else 0.0
    k = [0] * len(H_t) if streaks is None else streaks
    rows = [[h if _known(h) else 1.0, log_snr, x_norm if _known(x_norm) else 1.0, s, i / max(1, num_layers - 1),
             d, float(k[i])] for i, h in enumerate(H_t)]
    return torch.tensor(rows, dtype=torch.float32)


def _known(v: float | None) -> bool:
    return v is not None and v == v  # NaN: a trace row's missing value, read back from a table


def save_policy(policy: ReusePolicy, path: Path | str, meta: dict | None = None) -> None:
    from .files import atomic_write

    blob = {"format": FORMAT, "features": policy.features, "hidden": policy.hidden, "depth": policy.depth,
            "state_dict": policy.state_dict(), "meta": meta or {}}
    with atomic_write(path, "wb") as f:
        torch.save(blob, f)


def load_policy(path: Path | str) -> ReusePolicy:
    """Load a policy file; a missing, corrupt or foreign file is an error that names it."""
    from .files import load_tagged

    blob = load_tagged(path, FORMAT, "policy")
    features = tuple(blob.get("features", ()))
    if not features or any(f not in FEATURES for f in features):
        raise ValueError(f"{path} is not a DQAR policy file for features drawn from {FEATURES}: it has {features}")
    policy = ReusePolicy(blob["hidden"], blob["depth"], features)
    policy.load_state_dict(blob["state_dict"])
    return policy.eval()

