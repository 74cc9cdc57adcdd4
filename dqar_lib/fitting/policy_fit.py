"""Fitting the learned reuse policy (dqar_lib.method.policy) from per-class traces, and evaluating it held out.

Each traced (step, layer) pair carries the change of its attention output against the previous step,
rel_l2 = ||A_s - A_{s-1}|| / ||A_s||: the error that reusing it would make. A pair is labelled *cheap* (y = 1)
below the `cheap_quantile` of the training pairs' rel_l2, and p_reuse = P(cheap | H_t, log SNR_t, ||x_t||, t, l)
is fitted by binary cross-entropy on training seeds and classes. On held-out seeds and classes:

- `validate_proxy`: whether the proxy tracks the real cost, the final-sample error when only that pair reuses;
- `heldout_psnr` of the policy, at the threshold `match_reuse_threshold` finds, against the hand-set gates
  (`gates_config`) at the same reuse fraction.

`fit_and_evaluate_policy` runs all of it, as notebook 05's full profile does. Fitting sits below evaluation in
the package's layers, so the image metric (dqar_lib.evaluation.metrics.psnr) is passed in.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..artifacts import DATA
from ..method.config import DQARConfig
from ..method.files import DEFAULT_POLICY
from ..method.modes import Plan
from ..method.policy import ATTN_FEATURES, FEATURES, ReusePolicy, policy_features, save_policy
from ..method.schedule import progress
from ..method.serving import Serve, Store
from ..models.sampling import sample
from .tracing import gate_thresholds, record_trace

_Metric = Callable[[torch.Tensor, torch.Tensor], float]
"""An image metric of (images, reference) in [0, 1], e.g. dqar_lib.evaluation.metrics.psnr."""
Rows = pd.DataFrame | Iterable[dict]


def _frame(rows: Rows) -> pd.DataFrame:
    return rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(list(rows))


def trace_features(rows: list[dict], num_layers: int, num_train_timesteps: int = 1000) -> torch.Tensor:
    """(n, len(FEATURES)) features of trace rows, built exactly as the controller builds them at decision time;
    a row without a `streak` has streak 0 (a trace row's label is the cost of reusing the step before's output)."""
    out = [policy_features([r["H_t"]], r["SNR_t"], r["x_norm"], progress(r["t"], num_train_timesteps), 1,
                           r.get("x_change"), [int(r.get("streak", 0))])[0] for r in rows]
    f = torch.stack(out) if out else torch.zeros(0, len(FEATURES))
    f[:, 4] = torch.tensor([r["layer"] / max(1, num_layers - 1) for r in rows])
    return f


def train_policy(f: torch.Tensor, y: torch.Tensor, hidden: int = 64, depth: int = 2, epochs: int = 300,
                 lr: float = 3e-3, seed: int = 0,
                 features: tuple[str, ...] = ATTN_FEATURES) -> tuple[ReusePolicy, list[float]]:
    """Fit p_reuse = P(reuse is cheap | features) by full-batch AdamW on binary cross-entropy.

    f: (n, len(FEATURES)) features (`policy_features` columns); y: (n,) labels in [0, 1] (1: reusing this
    (step, layer) costs little; soft labels are a probability of that). The policy reads the columns named in
    `features`; they are standardised inside its first layer, so the policy file is self-contained.
    """
    if f.ndim != 2 or f.shape[1] != len(FEATURES) or y.shape != (f.shape[0],):
        raise ValueError(f"expected features (n, {len(FEATURES)}) and labels (n,), "
                         f"got {tuple(f.shape)} and {tuple(y.shape)}")
    torch.manual_seed(seed)
    policy = ReusePolicy(hidden, depth, features)
    mu, sd = f[:, policy.cols].mean(0), f[:, policy.cols].std(0).clamp_min(1e-6)
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


def record_class_traces(model, seeds: Sequence[int], classes: Sequence[int], per_class: int,
                        num_steps: int) -> pd.DataFrame:
    """Full-compute traces (`record_trace`) of `per_class` samples of each class for each seed, seeds outer.

    Rows carry their class as `cls`; step 0 is dropped (nothing is cached there to reuse; its rel_l2 is NaN).
    """
    rows = [dict(r, cls=c) for s in seeds for c in classes
            for r in record_trace(model, [c] * per_class, num_steps=num_steps, seed=s)]
    df = pd.DataFrame(rows)
    return df[df.step > 0].reset_index(drop=True)


def split_runs(rows: Rows, train_seeds: Sequence[int], train_classes: Sequence[int], test_seeds: Sequence[int],
               test_classes: Sequence[int]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train, test) trace rows: those of a training seed and class, and those of a held-out seed and class.

    Runs of a training seed with a held-out class (or the reverse) are in neither. Seeds or classes in both
    lists are an error: the test rows would not be held out.
    """
    for name, a, b in (("seeds", train_seeds, test_seeds), ("classes", train_classes, test_classes)):
        if set(a) & set(b):
            raise ValueError(f"train and test {name} overlap in {sorted(set(a) & set(b))}: nothing would be held out")
    df = _frame(rows)
    train = df[df.seed.isin(train_seeds) & df.cls.isin(train_classes)]
    test = df[df.seed.isin(test_seeds) & df.cls.isin(test_classes)]
    return train, test


def cheap_threshold(rows: Rows, quantile: float) -> float:
    """The rel_l2 below which a pair is labelled cheap: the `quantile` of the rows' rel_l2."""
    if not 0.0 <= quantile <= 1.0:
        raise ValueError(f"quantile={quantile!r} is invalid: expected a number in [0, 1]")
    return float(_frame(rows).rel_l2.quantile(quantile))


def label_rows(rows: Rows, threshold: float) -> torch.Tensor:
    """(n,) labels y in {0., 1.}: 1 (cheap to reuse) where the row's rel_l2 < `threshold` (NaN is expensive)."""
    return torch.tensor((_frame(rows).rel_l2 < threshold).values).float()


def label_accuracy(policy: ReusePolicy, f: torch.Tensor, y: torch.Tensor) -> float:
    """The fraction of rows where the policy's decision p_reuse > 0.5 agrees with the label y."""
    with torch.no_grad():
        return float(((policy(f) > 0.5).float() == y).float().mean())


def gates_config(rows: Rows) -> DQARConfig:
    """Hand-set gates with thresholds read off (training) traces by `gate_thresholds`, the rule notebook 06
    uses, reusing attention outputs as the policy does (its labels are the cost of attention reuse)."""
    return DQARConfig.preset("gates", granularity="attn", **gate_thresholds(_frame(rows).to_dict("records")))


def one_hot_plan(step: int, layer: int, num_steps: int, num_layers: int) -> tuple[tuple[bool, ...], ...]:
    """A `static_plan` that reuses exactly one (step, layer) pair and computes everything else."""
    return tuple(tuple(i == step and j == layer for j in range(num_layers)) for i in range(num_steps))


def validate_proxy(model, test: pd.DataFrame, cls: int, seed: int, per_class: int, num_steps: int, n_pairs: int,
                   random_state: int = 0) -> list[dict]:
    """The proxy rel_l2 against the real cost of reusing one (step, layer) pair, for `n_pairs` pairs.

    The pairs are drawn (`random_state`) from the distinct pairs of the held-out rows of `seed`. For each,
    `per_class` samples of class `cls` reuse that pair alone (a one-hot `static_plan`, fp32 cache so the
    reuse is the only error); the real cost is the final-sample MSE against full compute from the same seed.
    Returns one dict per pair: step, layer, proxy (that run's rel_l2 there), final_mse.
    """
    L = model.config.num_layers
    picks = test[test.seed == seed].drop_duplicates(["step", "layer"]).sample(n_pairs, random_state=random_state)
    full = sample(model, [cls] * per_class, num_steps=num_steps, seed=seed, progress=False)
    proxy = test[(test.cls == cls) & (test.seed == seed)].set_index(["step", "layer"]).rel_l2
    out = []
    for s, l in zip(picks.step, picks.layer):
        cfg = DQARConfig(decide=Plan(one_hot_plan(int(s), int(l), num_steps, L)), granularity="block", serve=Serve(),
                         store=Store(mode="fp32"), collect_stats=True)
        r = sample(model, [cls] * per_class, num_steps=num_steps, seed=seed, dqar=cfg, progress=False)
        mse = float((r.images - full.images).pow(2).mean())
        out.append(dict(step=int(s), layer=int(l), proxy=float(proxy[(s, l)]), final_mse=mse))
    return out


def sample_runs(model, seeds: Sequence[int], classes: Sequence[int], per_class: int, num_steps: int,
                dqar: DQARConfig | None = None) -> list:
    """One sampling call of `per_class` images per (seed, class), seeds outer; `dqar` None is full compute."""
    return [sample(model, [c] * per_class, num_steps=num_steps, seed=s, dqar=dqar, progress=False)
            for s in seeds for c in classes]


def heldout_psnr(model, cfg: DQARConfig, full: list, psnr: _Metric, seeds: Sequence[int], classes: Sequence[int],
                 per_class: int, num_steps: int) -> tuple[float, float]:
    """(mean PSNR against `full`, mean reuse fraction) of `cfg` over the runs `sample_runs` makes.

    `full` is `sample_runs` of the same seeds and classes without DQAR; `psnr` is the image metric.
    """
    if len(full) != len(seeds) * len(classes):
        raise ValueError(f"full holds {len(full)} runs, expected one per (seed, class): {len(seeds) * len(classes)}")
    runs = sample_runs(model, seeds, classes, per_class, num_steps, dqar=cfg)
    return (float(np.mean([psnr(r.images, f.images) for r, f in zip(runs, full)])),
            float(np.mean([r.stats["reuse_fraction"] for r in runs])))


def match_reuse_threshold(eval_fn: Callable[[float], tuple[float, float]], target_reuse: float, iters: int = 10,
                          lo: float = -30.0, hi: float = 30.0) -> tuple[float, tuple[float, float]]:
    """Bisect the policy threshold, in logit space, to the reuse fraction `target_reuse`.

    eval_fn(threshold) -> (quality, reuse fraction), the reuse fraction falling as the threshold rises
    (a pair reuses where p_reuse >= threshold). Each of the `iters` steps measures the threshold sigmoid(z) at
    the midpoint z of [lo, hi] and keeps the half towards the target. Returns the last threshold measured and
    its measured (quality, reuse fraction).
    """
    if iters < 1:
        raise ValueError(f"iters={iters!r} is invalid: expected at least 1")
    for _ in range(iters):
        z = (lo + hi) / 2
        threshold = float(torch.sigmoid(torch.tensor(z)))
        point = eval_fn(threshold)
        lo, hi = (z, hi) if point[1] > target_reuse else (lo, z)
    return threshold, point


def fit_and_evaluate_policy(model, psnr: _Metric, *, num_steps: int, train_seeds: Sequence[int],
                            train_classes: Sequence[int], test_seeds: Sequence[int], test_classes: Sequence[int],
                            per_class: int, cheap_quantile: float, n_validate: int,
                            policy_path: Path | str = DATA / DEFAULT_POLICY) -> dict:
    """Trace, label, train and save the policy (to `policy_path`), then evaluate it on held-out seeds and classes.

    Traces cover every class of `train_classes` and `test_classes` (ascending) for each seed (training seeds
    first). Returns notebook 05's result: losses (training BCE per epoch), validation (`validate_proxy` on the
    first held-out class and seed), acc_train / acc_test (`label_accuracy`), cheap_threshold, gates and policy
    (psnr and reuse on held-out runs; the policy's at the threshold matching the gates' reuse fraction, also
    stored), label_rate (the held-out fraction labelled cheap).
    """
    L = model.config.num_layers
    df = record_class_traces(model, [*train_seeds, *test_seeds], sorted({*train_classes, *test_classes}),
                             per_class, num_steps)
    train, test = split_runs(df, train_seeds, train_classes, test_seeds, test_classes)
    thr = cheap_threshold(train, cheap_quantile)
    f_tr, y_tr = trace_features(train.to_dict("records"), L), label_rows(train, thr)
    f_te, y_te = trace_features(test.to_dict("records"), L), label_rows(test, thr)
    policy, losses = train_policy(f_tr, y_tr)
    save_policy(policy, policy_path, meta=dict(cheap_threshold=thr, steps=num_steps, train_seeds=list(train_seeds),
                                               train_classes=list(train_classes)))
    validation = validate_proxy(model, test, test_classes[0], test_seeds[0], per_class, num_steps, n_validate)
    held = dict(seeds=test_seeds, classes=test_classes, per_class=per_class, num_steps=num_steps)
    full = sample_runs(model, **held)
    gates_psnr, gates_reuse = heldout_psnr(model, gates_config(train), full, psnr, **held)

    def policy_at(threshold: float) -> tuple[float, float]:
        cfg = DQARConfig.preset("policy", policy_threshold=threshold, policy_path=str(policy_path))
        return heldout_psnr(model, cfg, full, psnr, **held)

    threshold, (p_psnr, p_reuse) = match_reuse_threshold(policy_at, gates_reuse)
    return dict(losses=losses, validation=validation, acc_train=label_accuracy(policy, f_tr, y_tr),
                acc_test=label_accuracy(policy, f_te, y_te), cheap_threshold=thr,
                gates=dict(psnr=gates_psnr, reuse=gates_reuse),
                policy=dict(psnr=p_psnr, reuse=p_reuse, threshold=threshold), label_rate=float(y_te.mean()))
