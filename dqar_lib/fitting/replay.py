"""Replaying DQAR's decisions over stored traces, and fitting the gates to a reuse budget on them.

`replay` steps the controller's own decision rule over the host numbers a trace recorded, so a config's
reuse map and its predicted cost can be read without sampling; `fit_gate_thresholds` bisects a gate threshold
to a reuse budget that way.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch

from ..method.config import DQARConfig
from ..method.policy import ReusePolicy, load_policy, policy_features
from ..method.rule import RuleState
from ..method.schedule import progress
from .tracing import gate_thresholds


def runs(rows: list[dict]) -> dict[tuple, list[dict]]:
    """Trace rows grouped by run: (scheduler, seed, class) -> rows of that sampling run."""
    out: dict[tuple, list[dict]] = {}
    for r in rows:
        out.setdefault((r.get("scheduler"), r.get("seed"), r.get("cls")), []).append(r)
    return out


def replay(run_rows: list[dict], cfg: DQARConfig, num_train_timesteps: int = 1000, policy: ReusePolicy | None = None,
           prompt_length: int | None = None) -> np.ndarray:
    """(steps, layers) bool plan that `cfg` makes on one traced run, decided exactly as the controller does.

    The rows step the controller's own `RuleState` (dqar_lib.method.rule) with the statistics each decision
    saw (one step late), so the replay is exact while the cache holds a valid entry for every layer that may
    reuse (no byte budget, no invalidation); the one step with nothing cached is the first. For a policy
    config, `policy` (a ReusePolicy; loaded from cfg.decide.path when None) gives p_reuse from the rows.
    `prompt_length` is the p of tau(p) the run used (None for class labels).
    """
    if not run_rows:
        raise ValueError("replay needs the rows of one traced run; got none")
    S = 1 + max(r["step"] for r in run_rows)
    L = 1 + max(r["layer"] for r in run_rows)
    by = {(r["step"], r["layer"]): r for r in run_rows}
    if len(by) != S * L or len(run_rows) != S * L:
        raise ValueError(f"a traced run has {len(run_rows)} rows over {len(by)} (step, layer) pairs, expected one "
                         f"row for each of {S} x {L}: "
                         "pass the rows of one run (see `runs`)")
    if cfg.kind == "policy" and policy is None:
        policy = load_policy(cfg.decide.path)
    plan = np.zeros((S, L), dtype=bool)
    state = RuleState(L)
    for s in range(S):
        rows = [by[(s, i)] for i in range(L)]
        sp = progress(rows[0]["t"], num_train_timesteps)
        state.advance(sp, cfg.warmup)
        H, snr = [r["H_t"] for r in rows], rows[0]["SNR_t"]
        p = _policy_probs(policy, H, snr, rows[0]["x_norm"], sp, rows[0].get("x_change"), state.streaks) \
            if cfg.kind == "policy" and policy is not None else None
        for i, (ok, _) in enumerate(state.plan(cfg, sp, H, snr, p, prompt_length, steps_left=S - 1 - s)):
            plan[s, i] = ok and s > 0  # nothing is cached before the first step
            state.record(i, bool(plan[s, i]))
    return plan


def _policy_probs(policy: ReusePolicy, H: list, snr: float | None, x_norm: float | None, s: float,
                  x_change: float | None, streaks: list[int]) -> list[float]:
    """p_reuse of every layer at one step, from the features the controller builds at decision time."""
    with torch.no_grad():
        return policy(policy_features(H, snr, x_norm, s, len(H), x_change, streaks)).tolist()


def drift_cost(run_rows: list[dict], plan: np.ndarray) -> np.ndarray:
    """(steps, layers) relative error of the output each reuse serves: the summed step-to-step change
    (`rel_l2` of the trace) since the layer last computed, a triangle-inequality bound; 0 where it computes."""
    S, L = plan.shape
    rel = np.zeros((S, L))
    for r in run_rows:
        v = r["rel_l2"]
        rel[r["step"], r["layer"]] = 0.0 if v is None or not np.isfinite(v) else v
    cost = np.zeros((S, L))
    for s in range(1, S):
        cost[s] = np.where(plan[s], cost[s - 1] * plan[s - 1] + rel[s], 0.0)
    return cost


def summarize(rows: list[dict], cfg: DQARConfig, quant_error: float = 0.0) -> dict:
    """Mean over traced runs of the reuse fraction and the predicted error per reuse (drift + cache error)."""
    fr, err = [], []
    for run_rows in runs(rows).values():
        plan = replay(run_rows, cfg)
        fr.append(plan.mean())
        if plan.any():
            err.append(float(drift_cost(run_rows, plan)[plan].mean()) + quant_error)
    return {"reuse_fraction": float(np.mean(fr)), "error_per_reuse": float(np.mean(err)) if err else 0.0}


def grid_config(base: DQARConfig, tau: float, snr_lo: float, depth: float) -> DQARConfig:
    """`base` with the explorer's three knobs set: tau, snr_lo and the schedule's starting depth."""
    return base.replace(tau=float(tau), snr_lo=float(snr_lo), schedule_depth_start=float(depth))


def grid_summaries(rows: list[dict], base: DQARConfig, taus, snr_los, depths) -> dict[tuple, dict]:
    """`summarize` at every (tau, snr_lo, depth) point of the grid, keyed by that triple."""
    return {k: summarize(rows, grid_config(base, *k)) for k in itertools.product(taus, snr_los, depths)}


def fit_gate_thresholds(rows: list[dict], base: DQARConfig, target_reuse: float, snr_quantile: float = 0.3,
                    iters: int = 12) -> dict:
    """Gate thresholds for a reuse budget: snr_lo at `snr_quantile` of the traced SNR_t past warmup, and tau
    at the quantile of the traced H_t whose replayed reuse fraction (mean over the runs) comes closest to
    `target_reuse` from below. Returns {"tau", "snr_lo", "reuse_fraction"} (the replayed fraction)."""
    if not 0.0 < target_reuse < 1.0:
        raise ValueError(f"target_reuse={target_reuse!r} is invalid: expected a number in (0, 1)")
    lo, hi, best = 0.0, 1.0, None
    for _ in range(iters):
        q = (lo + hi) / 2
        g = gate_thresholds(rows, tau_quantile=q, snr_quantile=snr_quantile, warmup=base.warmup)
        fr = summarize(rows, base.replace(**g))["reuse_fraction"]
        if fr <= target_reuse:
            lo, best = q, dict(g, reuse_fraction=fr)
        else:
            hi = q
    if best is None:
        g = gate_thresholds(rows, tau_quantile=0.0, snr_quantile=snr_quantile, warmup=base.warmup)
        best = dict(g, reuse_fraction=summarize(rows, base.replace(**g))["reuse_fraction"])
    return best
