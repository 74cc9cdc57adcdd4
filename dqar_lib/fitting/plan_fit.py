"""An error-driven step plan for whole-stack forecast reuse, fitted to a reuse budget on held-out seeds.

Which steps may skip the block stack is decided from two measurements of full compute (the model, sampler and
step count the plan is for):

1. e(j, k, s): how far the linear forecast of the stack residual R (the last block's output minus the first
   block's input) from the computes at steps j < k misses R at step s > k, relative, along full compute's path
   (`residual_trace`, `forecast_errors`);
2. g_s: how much one such miss at step s costs the final images: skip step s alone, measure the images' RMS
   error against full compute, divide by e(s-2, s-1, s) (`skip_gains`).

A plan's predicted image error is sqrt(sum over its skipped steps of (g_s e(j, k, s))^2), with (j, k) the two
computes before s; `fit_plan` finds the plan with the least predicted error for a number of skips by dynamic
programming over the last two computes, exactly. It front-loads the computes wherever the measurements say so,
and places the computes near the end the same way. `calibrate_plan` does all three and returns the config.
"""

from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm

from ..method.config import DQARConfig
from ..method.hooks import self_attention_modules

# what the fitted plan is served with: the whole stack, forecast linearly from its last two computes
BASE = DQARConfig.preset("forecast", granularity="stack", max_reuse_streak=10**6, max_reuse_streak_end=None,
                         end_computes=0, warmup=0.0)


def _stack_ends(model: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The first and last transformer block (the parents of the first and last self-attention)."""
    mods = self_attention_modules(model)
    if not mods:
        raise ValueError(f"{type(model).__name__} has no self-attention modules: no block stack to fit a plan for")
    named = dict(model.named_modules())
    return tuple(named[mods[k][0].rpartition(".")[0]] for k in (0, -1))


def residual_trace(model: torch.nn.Module, labels, num_steps: int = 50, seed: int = 0, tokens: int = 64,
                   **sample_kwargs) -> torch.Tensor:
    """The stack residual R_s at every step of full compute, on `tokens` fixed tokens: (steps, B, tokens, D)."""
    from ..models.sampling import sample

    first, last = _stack_ends(model)
    rows, h0 = [], {}
    g = torch.Generator().manual_seed(seed)

    def pre(_m, args, kwargs):
        h0["x"] = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]  # (B, N, D)

    def post(_m, _args, _kwargs, out):
        r = (out - h0.pop("x")).float()  # (B, N, D)
        idx = h0.setdefault("idx", torch.randperm(r.shape[1], generator=g)[:tokens])
        rows.append(r[:, idx].cpu())

    hooks = [first.register_forward_pre_hook(pre, with_kwargs=True),
             last.register_forward_hook(post, with_kwargs=True)]
    try:
        sample(model, labels, num_steps=num_steps, seed=seed, progress=False, **sample_kwargs)
    finally:
        for h in hooks:
            h.remove()
    if len(rows) != num_steps:
        raise RuntimeError(f"recorded {len(rows)} stack residuals for {num_steps} steps: one forward per step expected")
    return torch.stack(rows)


def forecast_errors(R: torch.Tensor, fitted: bool = False) -> np.ndarray:
    """e[j, k, s]: relative L2 miss at step s > k of the linear forecast from the computes at steps j < k, or
    (`fitted`) of the least-squares combination of those two computes (`fit_weights`); inf elsewhere."""
    S = R.shape[0]
    flat = R.reshape(S, -1).double()  # (S, n)
    norm = flat.norm(dim=1).clamp_min(1e-12)
    e = np.full((S, S, S), np.inf)
    for k in range(1, S - 1):
        T = flat[k + 1:]  # (S - k - 1, n): the targets
        for j in range(k):
            if fitted:
                A = flat[[j, k]]  # (2, n)
                W = torch.linalg.solve(A @ A.T, A @ T.T).T  # (S - k - 1, 2)
                F = W @ A
            else:
                w = ((torch.arange(k + 1, S) - k) / (k - j)).double()[:, None]  # R_k + (R_k - R_j)(s - k)/(k - j)
                F = flat[k] + w * (flat[k] - flat[j])
            e[j, k, k + 1:] = ((F - T).norm(dim=1) / norm[k + 1:]).numpy()
    return e


def skip_rms(model: torch.nn.Module, labels, num_steps: int = 50, seed: int = 0, base: DQARConfig = BASE,
             first: int = 2, progress: bool = True, **sample_kwargs) -> np.ndarray:
    """r_s = RMS image error against full compute of skipping step s alone (served by `base`: a linear forecast
    from steps s-2 and s-1, a copy of step 0 at s = 1), for s >= `first`; NaN before it."""
    from ..models.sampling import sample

    if not 1 <= first < num_steps:
        raise ValueError(f"first={first!r} is invalid: step 0 has nothing to serve a skip from, so 1 <= first < "
                         f"{num_steps}")
    L = len(self_attention_modules(model))
    ref = sample(model, labels, num_steps=num_steps, seed=seed, progress=False, **sample_kwargs).images
    r = np.full(num_steps, np.nan)
    for s in tqdm(range(first, num_steps), desc="skip costs", disable=not progress, leave=False):
        plan = tuple(tuple([i == s] * L) for i in range(num_steps))
        img = sample(model, labels, num_steps=num_steps, seed=seed, progress=False,
                     dqar=base.replace(static_plan=plan), **sample_kwargs).images
        r[s] = float((img.float() - ref.float()).pow(2).mean().sqrt())
    return r


def skip_gains(model: torch.nn.Module, labels, e: np.ndarray, num_steps: int = 50, seed: int = 0,
               base: DQARConfig = BASE, progress: bool = True, **sample_kwargs) -> np.ndarray:
    """g_s = RMS image error of skipping step s alone (`skip_rms`) / e(s-2, s-1, s), for s >= 2 (g_0 = g_1 = inf)."""
    r = skip_rms(model, labels, num_steps, seed, base, 2, progress, **sample_kwargs)
    g = np.full(num_steps, np.inf)
    for s in range(2, num_steps):
        g[s] = r[s] / max(e[s - 2, s - 1, s], 1e-12)
    return g


def fit_plan(e: np.ndarray, g: np.ndarray, skips: int) -> tuple[list[bool], float]:
    """The step plan (True: skip) with `skips` skipped steps and the least predicted RMS image error, and that
    error. Steps 0 and 1 always compute (a linear forecast needs two computes)."""
    S = len(g)
    if not 0 <= skips <= S - 2:
        raise ValueError(f"skips={skips} is out of range: {S} steps, of which the first 2 always compute")
    # (j, k, s), 0 where s <= k (never summed: a segment starts after its compute k; large values there would
    # swamp the cumulative sums' precision); steps 0 and 1 compute, so every summed s has a finite g_s
    c2 = (np.where(np.isfinite(g), g, 0.0)[None, None, :] * np.where(np.isfinite(e), e, 0.0)) ** 2
    # seg[j, k, m] = sum of c2[j, k, s] for k < s < m: the cost of skipping every step between computes k and m
    cum = np.concatenate([np.zeros((S, S, 1)), np.cumsum(c2, axis=2)], axis=2)  # cum[..., m] = sum_{s < m}
    ks = np.arange(S)
    seg = cum - cum[:, ks, ks + 1][:, :, None]  # sum_{k < s < m} = cum[m] - cum[k + 1]
    seg = np.where(np.arange(S + 1)[None, None, :] > ks[None, :, None], seg, np.inf)  # only m > k
    computes = S - skips
    D = np.full((S, S), np.inf)  # D[j, k]: least cost with the latest two computes j < k
    D[0, 1] = 0.0
    back = []
    for _ in range(computes - 2):
        tot = D[:, :, None] + seg[:, :, :S]  # (j, k, m): add compute m after k
        arg = tot.argmin(axis=0)  # best j for each (k, m)
        back.append(arg)
        D = np.take_along_axis(tot, arg[None], axis=0)[0]
    final = D + seg[:, :, S]  # skip every step after the last compute
    j, k = np.unravel_index(np.argmin(final), final.shape)
    cost = float(final[j, k])
    chosen = [k, j] if computes >= 2 else []
    for arg in reversed(back):
        j, k = arg[j, k], j
        chosen.append(j)
    done = set(int(c) for c in chosen)
    return [s not in done for s in range(S)], float(np.sqrt(cost))


def fit_weights(R: torch.Tensor, skip: list[bool], n: int = 3) -> tuple[tuple[float, ...] | None, ...]:
    """Per skipped step s, the least-squares weights (oldest first) of the last `n` computes before s that best
    give R_s along full compute's path (fewer where fewer exist); None on steps that compute."""
    flat = R.reshape(R.shape[0], -1).double()  # (S, n_values)
    rows, done = [], []
    for s, skipped in enumerate(skip):
        if not skipped or len(done) < 2:
            rows.append(None)
        else:
            A = flat[done[-n:]].T  # (n_values, <= n)
            rows.append(tuple(float(w) for w in torch.linalg.lstsq(A, flat[s][:, None]).solution[:, 0]))
        if not skipped:
            done.append(s)
    return tuple(rows)


def calibrate_plans(model: torch.nn.Module, labels, budgets, num_steps: int = 50, seed: int = 1000,
                    progress: bool = True, **sample_kwargs) -> dict[float, tuple[DQARConfig, dict]]:
    """The fitted "plan" config for each budget (the fraction of steps that skip the stack), on `labels` and
    `seed` (keep them apart from the ones you evaluate on): budget -> (config, fit), the fit holding the plan, the
    predicted RMS image error and the gains. The two measurements are made once for every budget."""
    bad = [b for b in budgets if not 0.0 <= b < 1.0]
    if bad:
        raise ValueError(f"budget={bad[0]} is invalid: a fraction of the steps in [0, 1)")
    R = residual_trace(model, labels, num_steps, seed, **sample_kwargs)
    g = skip_gains(model, labels, forecast_errors(R), num_steps, seed, progress=progress, **sample_kwargs)
    e = forecast_errors(R, fitted=True)
    L, out = len(self_attention_modules(model)), {}
    for b in budgets:
        skip, err = fit_plan(e, g, int(round(b * num_steps)))
        cfg = BASE.replace(static_plan=tuple(tuple([s] * L) for s in skip), forecast_weights=fit_weights(R, skip))
        out[b] = cfg, dict(skip=skip, predicted_rms=err, gains=g.tolist(), budget=b, seed=seed)
    return out


def calibrate_plan(model: torch.nn.Module, labels, budget: float, num_steps: int = 50, seed: int = 1000,
                   progress: bool = True, **sample_kwargs) -> tuple[DQARConfig, dict]:
    """`calibrate_plans` for one budget: (config, fit)."""
    return calibrate_plans(model, labels, [budget], num_steps, seed, progress, **sample_kwargs)[budget]
