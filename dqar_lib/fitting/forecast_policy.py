"""Fitting the forecast policy: whether the whole block stack may skip a step, its residual forecast from the last
computes. The learned alternative to the "dqar" preset's hand-set streak profile (the "dqar_policy" preset).

Labels are the measured cost of skipping, per (step s, streak k), k being the reuses since the last compute:

    cost(s, k) = r_s * e_k(s) / e_1(s)

- r_s: the final images' RMS error when step s alone skips (`plan_fit.skip_rms`, one sampling run per step), its
  residual served by a linear forecast from steps s-2 and s-1, whose miss is e_1(s);
- e_k(s): the relative miss of the forecast, at `order`, of the stack residual R_s from computes spaced k + 1
  steps apart, the last at s - k - 1, along full compute's path (`streak_errors`): the computes a policy has when
  it keeps reusing k steps a compute (fewer near the start, as the runtime forecast has).

The policy is fitted to soft labels, y = sigmoid((ln c - ln cost) / T), with c the `cheap_quantile` of the
training rows' cost and T the `softness`: p_reuse ranks rows by their predicted cost, so its threshold is one knob
over the whole range (p >= 0.5 reuses where the predicted cost is below c; lower thresholds admit dearer skips).
For the AUC a row is *cheap* below c. The features are
those the controller builds at decision time (`policy_features`), read off a full-compute trace at layer 0 (the
stack's decision) with the streak set to k. Training and held-out runs differ in labels and seeds;
`fit_and_evaluate_forecast_policy` trains, saves, compares the policy with the "dqar" preset at equal reuse on
the held-out runs, and ablates each signal.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from ..artifacts import DATA
from ..method.config import DQARConfig
from ..method.files import DEFAULT_FORECAST_POLICY
from ..method.forecast import newton_weights
from ..method.policy import ReusePolicy, save_policy
from ..models.sampling import sample
from .plan_fit import residual_trace, skip_rms
from .policy_fit import match_reuse_threshold, trace_features, train_policy
from .tracing import record_trace

STREAKS = (0, 1)
"""The streaks labelled: a skip right after a compute, and the second in a row (the "dqar_policy" preset caps
streaks at 2; a pilot with a cap of 3 lost up to 10 dB on held-out seeds to third skips late in the run)."""
SIGNALS = ("H_t", "log_snr", "x_norm", "progress", "x_change", "streak")
"""What the forecast policy reads (the layer's depth is constant for the stack's decision)."""
_Metric = Callable[[torch.Tensor, torch.Tensor], float]


def streak_errors(R: torch.Tensor, order: int, streaks: Sequence[int] = STREAKS) -> np.ndarray:
    """(S, len(streaks)) e_k(s): the relative L2 miss of the order-`order` forecast of R_s (R: (S, ...), the stack
    residual at every step of full compute) from the computes at s - k - 1 - m (k + 1), m = 0 .. order, in the step
    index; those before step 0 are left out (a lower order, as the runtime forecast serves with fewer computes);
    NaN where none is left."""
    if order not in (1, 2):
        raise ValueError(f"order={order!r} is invalid: the forecast policy serves a forecast of order 1 or 2")
    S = R.shape[0]
    flat = R.reshape(S, -1).double()  # (S, n)
    e = np.full((S, len(streaks)), np.nan)
    for j, k in enumerate(streaks):
        for s in range(S):
            steps = [a for a in (s - k - 1 - m * (k + 1) for m in range(order, -1, -1)) if a >= 0]  # oldest first
            if not steps:
                continue
            w = newton_weights([float(a) for a in steps], float(s))
            F = sum(wi * flat[a] for wi, a in zip(w, steps))
            e[s, j] = float((F - flat[s]).norm() / flat[s].norm().clamp_min(1e-12))
    return e


def policy_rows(model, labels, seed: int, num_steps: int, order: int, progress_bar: bool = True) -> pd.DataFrame:
    """One row per (step, streak) of one sampling run (`labels`, `seed`): the decision-time signals of layer 0 in a
    full-compute trace, the streak, the gain g_s = r_s / e_1(s), e_k(s) and the cost g_s e_k(s). Costs num_steps + 2
    sampling runs (the trace, the residuals, full compute, one skip per step from step 1)."""
    trace = [r for r in record_trace(model, labels, num_steps=num_steps, seed=seed) if r["layer"] == 0]
    R = residual_trace(model, labels, num_steps, seed)  # (S, B, tokens, D)
    g = skip_rms(model, labels, num_steps, seed, first=1, progress=progress_bar) / streak_errors(R, 1, (0,))[:, 0]
    e = streak_errors(R, order)
    rows = []
    for r in trace:
        s = r["step"]
        for j, k in enumerate(STREAKS):
            if np.isfinite(e[s, j]) and np.isfinite(g[s]):
                rows.append(dict(seed=seed, step=s, streak=k, t=r["t"], H_t=r["H_t"], SNR_t=r["SNR_t"],
                                 x_norm=r["x_norm"], x_change=r["x_change"], gain=float(g[s]), error=float(e[s, j]),
                                 cost=float(g[s] * e[s, j])))
    return pd.DataFrame(rows)


def row_features(rows: pd.DataFrame, num_train_timesteps: int = 1000) -> torch.Tensor:
    """(n, len(FEATURES)) features of `policy_rows` rows, as the controller builds them for layer 0."""
    return trace_features(rows.assign(layer=0).to_dict("records"), 1, num_train_timesteps)


def roc_auc(p: torch.Tensor, y: torch.Tensor) -> float:
    """The probability that a random cheap row (y = 1) gets a higher p than a random costly one (ties count half)."""
    ranks = pd.Series(p.numpy()).rank().to_numpy()
    pos = y.numpy() > 0.5
    n1, n0 = int(pos.sum()), int((~pos).sum())
    if not n1 or not n0:
        raise ValueError(f"the AUC needs both labels: {n1} cheap and {n0} costly rows")
    return float((ranks[pos].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def heldout(model, cfg: DQARConfig | None, labels, seeds: Sequence[int], num_steps: int) -> list:
    """The images and reuse fraction of one sampling run per held-out seed (`cfg` None: full compute)."""
    return [sample(model, labels, num_steps=num_steps, seed=s, dqar=cfg, progress=False) for s in seeds]


def quality(runs: list, full: list, psnr: _Metric) -> tuple[float, float]:
    """(mean PSNR against `full`, mean reuse fraction) of runs `heldout` made."""
    return (float(np.mean([psnr(r.images, f.images) for r, f in zip(runs, full)])),
            float(np.mean([r.stats["reuse_fraction"] for r in runs])))


def fit_and_evaluate_forecast_policy(model, psnr: _Metric, *, num_steps: int, train_labels: Sequence[int],
                                     train_seeds: Sequence[int], test_labels: Sequence[int],
                                     test_seeds: Sequence[int], order: int = 2, cheap_quantile: float = 0.5,
                                     softness: float = 0.5,
                                     thresholds: Sequence[float] = (0.02, 0.05, 0.1, 0.2, 0.4),
                                     policy_path: Path | str = DATA / DEFAULT_FORECAST_POLICY,
                                     progress_bar: bool = True) -> dict:
    """Label, train and save the forecast policy (to `policy_path`, reading `SIGNALS`), then on held-out labels and
    seeds: its label AUC, its PSNR against full compute at `thresholds`, and at the threshold that matches the
    "dqar" preset's reuse fraction beside that preset's; and the ablation, each signal dropped in turn (trained the
    same way, compared at the same reuse). Notebook 05's full profile runs it.

    Returns losses, cheap_threshold, rows (every labelled row, train and test, with its split), auc_train,
    auc_test, preset / policy (psnr, reuse; the policy's threshold), curve (threshold, psnr, reuse) and ablation
    (dropped signal or "none", auc_test, psnr, reuse, threshold).
    """
    if set(train_seeds) & set(test_seeds) or set(train_labels) & set(test_labels):
        raise ValueError(f"train and test share seeds {sorted(set(train_seeds) & set(test_seeds))} or labels "
                         f"{sorted(set(train_labels) & set(test_labels))}: nothing would be held out")
    frames = [policy_rows(model, lab, s, num_steps, order, progress_bar).assign(split=split)
              for split, lab, seeds in (("train", train_labels, train_seeds), ("test", test_labels, test_seeds))
              for s in tqdm(seeds, desc=f"{split} labels", disable=not progress_bar, leave=False)]
    rows = pd.concat(frames, ignore_index=True)
    train, test = rows[rows.split == "train"], rows[rows.split == "test"]
    if not softness > 0:
        raise ValueError(f"softness={softness!r} is invalid: expected a positive temperature (in ln cost)")
    thr = float(train.cost.quantile(cheap_quantile))
    f_tr, f_te = row_features(train), row_features(test)
    y_tr = torch.sigmoid(torch.tensor(np.log(thr / train.cost.values) / softness)).float()  # soft: ranks by cost
    hard_tr, y_te = torch.tensor((train.cost < thr).values).float(), torch.tensor((test.cost < thr).values).float()

    full = heldout(model, None, list(test_labels), test_seeds, num_steps)
    preset = quality(heldout(model, DQARConfig.preset("dqar", forecast_order=order), list(test_labels), test_seeds,
                             num_steps), full, psnr)

    def at(path: Path | str) -> Callable[[float], tuple[float, float]]:
        def run(threshold: float) -> tuple[float, float]:
            cfg = DQARConfig.preset("dqar_policy", forecast_order=order, policy_path=str(path),
                                    policy_threshold=threshold)
            return quality(heldout(model, cfg, list(test_labels), test_seeds, num_steps), full, psnr)
        return run

    def fit(features: tuple[str, ...], path: Path | str) -> tuple[ReusePolicy, list[float]]:
        policy, losses = train_policy(f_tr, y_tr, features=features)
        save_policy(policy, path, meta=dict(cheap_threshold=thr, cheap_quantile=cheap_quantile, softness=softness,
                                            order=order,
                                            steps=num_steps, train_labels=list(train_labels),
                                            train_seeds=list(train_seeds)))
        return policy, losses

    policy, losses = fit(SIGNALS, policy_path)
    with torch.no_grad():
        auc_train, auc_test = roc_auc(policy(f_tr), hard_tr), roc_auc(policy(f_te), y_te)
    curve = [dict(threshold=float(t), **dict(zip(("psnr", "reuse"), at(policy_path)(t)))) for t in thresholds]
    threshold, (p_psnr, p_reuse) = match_reuse_threshold(at(policy_path), preset[1], iters=8)
    ablation = [dict(dropped="none", auc_test=auc_test, psnr=p_psnr, reuse=p_reuse, threshold=threshold)]
    with tempfile.TemporaryDirectory() as tmp:
        for name in tqdm(SIGNALS, desc="ablation", disable=not progress_bar, leave=False):
            path = Path(tmp) / f"without_{name}.pt"
            p_abl, _ = fit(tuple(f for f in SIGNALS if f != name), path)
            with torch.no_grad():
                a = roc_auc(p_abl(f_te), y_te)
            t_abl, (q, r) = match_reuse_threshold(at(path), preset[1], iters=8)
            ablation.append(dict(dropped=name, auc_test=a, psnr=q, reuse=r, threshold=t_abl))
    return dict(losses=losses, cheap_threshold=thr, rows=rows.to_dict("records"), auc_train=auc_train,
                auc_test=auc_test, preset=dict(psnr=preset[0], reuse=preset[1]),
                policy=dict(psnr=p_psnr, reuse=p_reuse, threshold=threshold), curve=curve, ablation=ablation,
                label_rate=float(y_te.mean()))
