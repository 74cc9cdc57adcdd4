"""Fitting DQAR's gates to a new model in one call, and keeping the fit as a small JSON beside the model.

    cfg = calibrate(pipe, budget=0.3)                  # tau and snr_lo for ~30 % reuse on held-out seeds
    save_calibration(cfg, "models/my-dit")             # models/my-dit/dqar_calibration.json
    cfg = load_calibration("models/my-dit")

The traces are full-compute runs on `seeds` (held out: the benchmark's seeds start at 0); the gates are fitted on
them by replaying the controller's own rule (`dqar_lib.fitting.replay`), so nothing is sampled twice.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..artifacts import read_result, write_result
from ..method.config import DQARConfig
from ..models.pipelines import conditions_for
from ..models.prompts import read_prompts
from .replay import fit_gate_thresholds, summarize
from .tracing import gate_thresholds, record_trace

CALIBRATION_FILE = "dqar_calibration.json"
HELD_OUT_SEEDS = (1000, 1001)


def _conditions(pipe_or_transformer, n: int, class_labels, prompts, sample_kwargs: dict) -> dict:
    if sample_kwargs or class_labels is not None and not hasattr(pipe_or_transformer, "transformer"):
        return dict(class_labels=class_labels, **sample_kwargs)
    if hasattr(pipe_or_transformer, "transformer"):
        text = getattr(pipe_or_transformer.transformer.config, "caption_channels", None) is not None
        cond = conditions_for(pipe_or_transformer, n, class_labels, (prompts or read_prompts()) if text else None)
        return cond.sample_kwargs()
    classes = getattr(pipe_or_transformer.config, "num_embeds_ada_norm", None)
    if classes is None:
        raise ValueError(f"calibrate a text-conditioned {type(pipe_or_transformer).__name__} through its pipeline "
                         "(prompts are encoded there), or pass prompt_embeds=")
    return dict(class_labels=[i % classes for i in range(n)])


def calibrate(pipe_or_transformer, budget: float | None = 0.3, error_budget: float | None = None,
              base: DQARConfig | str = "gates", seeds=HELD_OUT_SEEDS, num_steps: int = 20, scheduler: str = "ddim",
              n: int = 4, class_labels=None, prompts: list[str] | None = None, guidance_scale: float | None = None,
              save_to: str | Path | None = None, progress: bool = False, **sample_kwargs) -> DQARConfig:
    """`base` (a preset name or config) with tau and snr_lo fitted to this model on full-compute traces of `seeds`.

    `budget`: the reuse fraction to reach from below (tau bisected on the traced H_t, snr_lo at the 0.3 quantile
    of SNR_t). `error_budget` (instead): the most reuse whose predicted error per reuse (drift since the last
    compute, `replay.summarize`) stays within it. Conditioning: a pipeline's first `n` class ids, or `prompts`
    (default: the shipped set); a bare DiT transformer, labels 0..n-1; or `class_labels` / `sample_kwargs` as for
    `sample`. `save_to` writes the config and the fit (`save_calibration`).
    """
    cfg = DQARConfig.preset(base) if isinstance(base, str) else base
    if not isinstance(cfg, DQARConfig):
        raise TypeError(f"base must be a preset name or a DQARConfig, got {type(base).__name__}")
    if cfg.kind != "gates" or cfg.decide.tau is None or cfg.decide.snr_lo is None:
        raise ValueError(f"calibrate fits the entropy and SNR gates; the base config must use both (the 'gates' "
                         f"preset does), not decide by {cfg.kind!r}")
    if (budget is None) == (error_budget is None):
        raise ValueError(f"give exactly one of budget (a reuse fraction) and error_budget, got budget={budget!r}, "
                         f"error_budget={error_budget!r}")
    if error_budget is not None and not (isinstance(error_budget, (int, float)) and error_budget > 0):
        raise ValueError(f"error_budget={error_budget!r} is invalid: expected a number > 0")
    if not seeds:
        raise ValueError("calibrate needs at least one held-out seed")
    transformer = getattr(pipe_or_transformer, "transformer", pipe_or_transformer)
    cond = _conditions(pipe_or_transformer, n, class_labels, prompts, sample_kwargs)
    labels = cond.pop("class_labels", None)
    rows = [r for seed in seeds for r in record_trace(transformer, labels, num_steps, scheduler, seed, guidance_scale,
                                                      progress, **cond)]
    if budget is not None:
        fit = fit_gate_thresholds(rows, cfg, target_reuse=budget)
    else:
        fit = _fit_error(rows, cfg, error_budget)
    fitted = cfg.replace(tau=float(fit["tau"]), snr_lo=float(fit["snr_lo"]))
    fit = dict(fit, budget=budget, error_budget=error_budget, seeds=list(seeds), num_steps=num_steps,
               scheduler=scheduler, **summarize(rows, fitted))
    if save_to is not None:
        save_calibration(fitted, save_to, fit)
    return fitted


def _fit_error(rows: list[dict], cfg: DQARConfig, error_budget: float, points: int = 21) -> dict:
    """The tau quantile with the most replayed reuse whose predicted error per reuse is within `error_budget`."""
    best = None
    for q in np.linspace(0.0, 1.0, points):
        g = gate_thresholds(rows, tau_quantile=float(q), warmup=cfg.warmup)
        s = summarize(rows, cfg.replace(**g))
        if s["error_per_reuse"] <= error_budget and (best is None or s["reuse_fraction"] > best["reuse_fraction"]):
            best = dict(g, **s)
    return best or dict(gate_thresholds(rows, tau_quantile=0.0, warmup=cfg.warmup), reuse_fraction=0.0)


def _file(path: str | Path) -> Path:
    path = Path(path)
    return path / CALIBRATION_FILE if path.is_dir() or not path.suffix else path


def save_calibration(config: DQARConfig, path: str | Path, fit: dict | None = None) -> Path:
    """Write `config` (every field) and the fit as JSON with a manifest: into a folder (e.g. the model's) as
    dqar_calibration.json, or to a .json path."""
    return write_result(_file(path), dict(format="dqar-calibration/1", config=config.to_dict(), fit=fit or {}))


def load_calibration(path: str | Path) -> DQARConfig:
    """The DQARConfig saved by `save_calibration` (a folder holding dqar_calibration.json, or the file)."""
    path = _file(path)
    result = read_result(path)["result"]
    if not isinstance(result, dict) or result.get("format") != "dqar-calibration/1":
        raise ValueError(f"{path} is not a DQAR calibration file (format tag {result.get('format')!r})")
    try:
        return DQARConfig.from_dict(result["config"])
    except (ValueError, TypeError) as e:
        raise ValueError(f"{path} holds an invalid DQAR config: {e}") from None
