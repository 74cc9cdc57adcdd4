"""The reference scaffold's dummy sweep, on the embedded CIFAR-10 DiT: baseline, static and DQAR over entropy
thresholds x reuse limits, with runtime, resident memory and reuse for each.

    rows = threshold_sweep(load_model(), thresholds=[1.5, 3.0, 4.0], reuse_limits=[2, 4, 6], max_gap=6, runs=5)
    python scripts/dummy_benchmark_sweep.py --thresholds 1.5,3.0,4.0 --reuse-limits 2,4,6 --dqar-max-gap 6 --runs 5

How the scaffold's knobs map onto DQAR's:

- a threshold is raw attention entropy in nats; DQAR's gate reads H_t, the mean entropy of sampled attention rows
  divided by log N (N the model's tokens, `dqar_lib.method.stats`), so in [0, 1]. The threshold H becomes
  tau = H / log N. N = (sample_size / patch_size)^2: 64 on the embedded model, log N = 4.16 nats. No attention over N
  tokens has an entropy above log N, so a threshold above it is refused, naming the bound (the scaffold's 5.0 is one).
- a reuse limit r is DQAR's cap on reuses in a row per block (`max_reuse_streak`); --dqar-max-gap g says a block
  computes at least once every g steps, so the cap DQAR runs with is min(r, g - 1).
- DQAR is the "gates" preset (entropy gate tau, SNR gate, layer schedule) with that tau and cap; static is the
  "static" preset (DiTFastAttn's periodic rule) and baseline full compute: neither reads a threshold or a limit, so
  each is measured once and its record repeated at every grid point, as the scaffold's JSON lists them.
- runs: timed runs of each configuration after one untimed warm-up; runtime is their mean and standard deviation;
  RSS the process's resident memory right after each run, averaged; reuse the (step, block) reuses of one sampling
  run (events) and their fraction.
"""

from __future__ import annotations

import math
import statistics
import time
import warnings

import torch

from ..method.config import DQARConfig
from ..models.sampling import class_label_tensor, sample
from .timing import resident_bytes

SCENARIOS = ("baseline", "static", "dqar")


def token_count(model: torch.nn.Module) -> int:
    """N, the tokens a block attends over: (sample_size / patch_size)^2."""
    c = model.config
    return (c.sample_size // c.patch_size) ** 2


def tau_of(threshold_nats: float, n_tokens: int) -> float:
    """DQAR's normalised tau for a raw entropy threshold in nats: H / log N; a ValueError above log N or below 0."""
    bound = math.log(n_tokens)
    if not 0 <= threshold_nats <= bound:
        raise ValueError(f"entropy threshold {threshold_nats:g} nats is outside [0, log N] = [0, {bound:.2f}] for "
                         f"this model's N = {n_tokens} tokens (no attention over them has more entropy); give "
                         f"thresholds up to {math.floor(bound * 100) / 100:g}, e.g. --thresholds 1.5,3.0,4.0")
    return threshold_nats / bound


def sweep_configs(model, thresholds, reuse_limits, max_gap: int) -> dict[tuple[float, int], DQARConfig]:
    """(threshold, limit) -> the "gates" preset with tau = threshold / log N and cap min(limit, max_gap - 1)."""
    if not isinstance(max_gap, int) or max_gap < 2:
        raise ValueError(f"--dqar-max-gap must be an integer >= 2 (a block computes at least once every that many "
                         f"steps, so 2 allows one reuse), got {max_gap!r}")
    bad = [r for r in reuse_limits if not isinstance(r, int) or r < 1]
    if bad:
        raise ValueError(f"reuse limits must be integers >= 1 (reuses in a row), got {bad}")
    n = token_count(model)
    return {(h, r): DQARConfig.preset("gates", tau=tau_of(h, n), max_reuse_streak=min(r, max_gap - 1))
            for h in thresholds for r in reuse_limits}


def measure(model, labels, config: DQARConfig | None, runs: int, num_steps: int, seed: int = 0) -> dict:
    """One configuration: a warm-up, then `runs` timed runs; mean / std seconds, mean RSS, reuse of a run."""
    kw = dict(num_steps=num_steps, seed=seed, progress=False, dqar=config)
    with warnings.catch_warnings():  # a threshold that gates every step is a sweep point, reported as 0 reuse
        warnings.filterwarnings("ignore", message="DQAR reused nothing", category=RuntimeWarning)
        res = sample(model, labels, **kw)
        times, rss = [], []
        for _ in range(runs):
            t0 = time.perf_counter()
            res = sample(model, labels, **kw)
            times.append(time.perf_counter() - t0)
            rss.append(resident_bytes())
    return dict(avg_time_s=statistics.fmean(times), std_time_s=statistics.stdev(times) if runs > 1 else 0.0,
                times_s=times, avg_rss_mb=statistics.fmean(rss) / 2**20,
                avg_reuse=int(sum(res.stats.get("per_layer_reuse", []))),
                reuse_fraction=float(res.stats.get("reuse_fraction", 0.0)),
                peak_cache_mb=res.stats.get("peak_cache_bytes", 0) / 2**20)


def threshold_sweep(model, thresholds, reuse_limits, max_gap: int = 6, runs: int = 5, num_steps: int = 20,
                    labels=(0, 1, 2, 3), seed: int = 0, progress: bool = True) -> list[dict]:
    """A record per (threshold, limit, scenario): threshold (nats), max_reuse (the limit), scenario, tau and cap
    (what DQAR ran with; None for baseline and static), avg_time_s, std_time_s, times_s, avg_rss_mb, avg_reuse
    (reuse events in one run), reuse_fraction, peak_cache_mb. Thresholds and limits are checked before anything
    runs (see the module's docstring for the mapping)."""
    from tqdm.auto import tqdm

    if not isinstance(runs, int) or runs < 1:
        raise ValueError(f"--runs must be an integer >= 1, got {runs!r}")
    if not thresholds or not reuse_limits:
        raise ValueError("give at least one threshold and one reuse limit")
    configs = sweep_configs(model, thresholds, reuse_limits, max_gap)
    class_label_tensor(list(labels), model.config.num_embeds_ada_norm, type(model).__name__)  # before anything runs
    jobs = {"baseline": None, "static": DQARConfig.preset("static"), **{k: c for k, c in configs.items()}}
    measured = {}
    for key, cfg in tqdm(jobs.items(), desc="sweep configs", disable=not progress):
        measured[key] = measure(model, list(labels), cfg, runs, num_steps, seed)
    records = []
    for (h, r), cfg in configs.items():
        for scenario in SCENARIOS:
            dqar = scenario == "dqar"
            m = measured[(h, r) if dqar else scenario]
            records.append(dict(threshold=h, max_reuse=r, scenario=scenario, tau=cfg.decide.tau if dqar else None,
                                cap=cfg.decide.max_streak if dqar else None, **m))
    return records
