"""cache-dit's DBCache, optionally with its TaylorSeer calibrator, as a peer (the installed `cache-dit` package).

    peer = get_peer("cachedit", residual_diff_threshold=0.08)      # or CacheDitPeer(..., taylorseer_order=1)
    res = run_method(model, peer, labels, num_steps=50)            # prepare, apply, sample(step_callback), remove

DBCache (dual-block cache): every step runs the first `Fn_compute_blocks` blocks; when their residual changed by
less than `residual_diff_threshold` (relative L1 to the last computed step's), the middle blocks are skipped and
their cached residual is added instead (with TaylorSeer: extrapolated from the last computes); the last
`Bn_compute_blocks` blocks always run.

cache-dit registers an adapter for diffusers' DiT (`cache_dit.get_adapter(transformer)`: `transformer_blocks`,
ForwardPattern.Pattern_3, its DiTPatchFunctor), used here as it is. `sample` runs CFG as one batch of 2N rows,
so each model call is one step (enable_separate_cfg=False). cache-dit keeps one persistent context per
transformer and refreshes it only one call after `num_inference_steps` calls, so a run's first step refreshes it
(`cache_dit.refresh_context`) and each run starts fresh. `remove` is `cache_dit.disable_cache` plus what that
leaves on the model: the patch functor's instance `forward`, `_is_patched` and `_norm1_emb` (block 0's
embedding registered a second time as a submodule, which adds state_dict keys). Skipped blocks are counted by the
benchmark (`_CallCounter`), as for the other peers; `cached_steps` is cache-dit's own list from the last run.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import math
from dataclasses import dataclass, field

import torch

from ..models.sampling import sample
from .methods import Method

_STEPS = inspect.signature(sample).parameters["num_steps"].default


@contextlib.contextmanager
def _quiet():
    """cache-dit logs every attach, refresh and removal at INFO / WARNING; keep its loggers at ERROR meanwhile."""
    loggers = [logging.getLogger(n) for n in list(logging.Logger.manager.loggerDict) if n.startswith("cache_dit")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _footprint(model: torch.nn.Module) -> dict[int, tuple[set, set]]:
    """Each module's attribute names and submodule names, to undo what cache-dit adds."""
    return {id(m): (set(vars(m)), set(m._modules)) for m in model.modules()}


@dataclass
class CacheDitPeer(Method):
    """cache-dit's DBCache on a diffusers DiTTransformer2DModel. Defaults are DBCacheConfig's except the blocks.

    - `residual_diff_threshold`: skip the middle blocks while the first blocks' residual changes by less than
      this (relative L1); 0.08 is DBCacheConfig's default. 0 never skips.
    - `Fn_compute_blocks`: first blocks always computed, whose residual gives the change signal (>= 1). 1, not
      cache-dit's 8: 8 is every block of the shipped 8-layer CIFAR-10 DiT, which would leave nothing to skip;
      of F1B0, F1B1, F2B0 and F2B1 there, F1B0 kept the most PSNR per skipped block (F1B1 close behind).
    - `Bn_compute_blocks`: last blocks always computed on the approximate hidden states (>= 0; DBCacheConfig's 0).
    - `max_warmup_steps`: the first steps always compute (DBCacheConfig's 8).
    - `max_continuous_cached_steps`: at most this many skipped steps in a row (-1: no limit, DBCacheConfig's).
    - `taylorseer_order`: None for plain reuse, or 1, 2: the cached residual is a Taylor extrapolation of that
      order from the last computes (TaylorSeerCalibratorConfig; its default order is 1).
    """

    residual_diff_threshold: float = 0.08
    Fn_compute_blocks: int = 1
    Bn_compute_blocks: int = 0
    max_warmup_steps: int = 8
    max_continuous_cached_steps: int = -1
    taylorseer_order: int | None = None
    name: str = "cachedit"
    num_steps: int = _STEPS
    cached_steps: list[int] = field(default_factory=list)
    _model: torch.nn.Module | None = field(default=None, repr=False)
    _adapter: object = field(default=None, repr=False)
    _before: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        r = self.residual_diff_threshold
        if isinstance(r, bool) or not isinstance(r, (int, float)) or not math.isfinite(r) or r < 0:
            raise ValueError(f"residual_diff_threshold must be a finite number >= 0, got {r!r}")
        for knob, low in (("Fn_compute_blocks", 1), ("Bn_compute_blocks", 0), ("max_warmup_steps", 0),
                          ("max_continuous_cached_steps", -1)):
            v = getattr(self, knob)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ValueError(f"{knob} must be an integer >= {low}, got {v!r}")
        k = self.taylorseer_order
        if k is not None and (isinstance(k, bool) or k not in (1, 2)):
            raise ValueError(f"taylorseer_order must be None (plain reuse), 1 or 2, got {k!r}")
        self.params = dict(residual_diff_threshold=r, Fn_compute_blocks=self.Fn_compute_blocks,
                           Bn_compute_blocks=self.Bn_compute_blocks, max_warmup_steps=self.max_warmup_steps,
                           max_continuous_cached_steps=self.max_continuous_cached_steps, taylorseer_order=k)

    def configs(self):
        """cache-dit's (DBCacheConfig, TaylorSeerCalibratorConfig or None) for a run of `num_steps` steps."""
        import cache_dit

        cache = cache_dit.DBCacheConfig(
            residual_diff_threshold=float(self.residual_diff_threshold), Fn_compute_blocks=self.Fn_compute_blocks,
            Bn_compute_blocks=self.Bn_compute_blocks, max_warmup_steps=self.max_warmup_steps,
            max_continuous_cached_steps=self.max_continuous_cached_steps, num_inference_steps=self.num_steps,
            enable_separate_cfg=False)  # CFG is one batch: one call per step
        calib = None if self.taylorseer_order is None else cache_dit.TaylorSeerCalibratorConfig(
            taylorseer_order=self.taylorseer_order)
        return cache, calib

    def prepare(self, model, labels, **sample_kwargs) -> None:
        """Learn the run's step count (cache-dit's num_inference_steps); call before apply."""
        self.num_steps = sample_kwargs.get("num_steps", _STEPS)

    def apply(self, model: torch.nn.Module) -> None:
        """`cache_dit.enable_cache` with cache-dit's DiT adapter (all or none: a failing attach is undone)."""
        from diffusers import DiTTransformer2DModel

        if self._model is not None:
            raise RuntimeError(f"peer {self.name!r} is already applied; call remove first")
        if any(k in vars(model) for k in ("_is_cached", "_is_patched", "_context_manager")):
            raise RuntimeError(f"peer {self.name!r}: the model already holds a cache-dit cache; remove the method "
                               "that attached it first")
        if not isinstance(model, DiTTransformer2DModel):
            raise ValueError(f"peer {self.name!r} runs cache-dit's DiT adapter, which needs a "
                             f"DiTTransformer2DModel; got {type(model).__name__}")
        L = len(model.transformer_blocks)
        if self.Fn_compute_blocks + self.Bn_compute_blocks > L:
            raise ValueError(f"Fn_compute_blocks + Bn_compute_blocks must be at most the model's {L} blocks, got "
                             f"{self.Fn_compute_blocks} + {self.Bn_compute_blocks}")
        import cache_dit

        self._model, self._before, self.cached_steps = model, _footprint(model), []
        cache, calib = self.configs()
        try:
            with _quiet():
                self._adapter = cache_dit.get_adapter(model)
                cache_dit.enable_cache(self._adapter, cache_config=cache, calibrator_config=calib)
        except Exception:
            self.remove(model)
            raise

    def step_callback(self, i: int, t) -> None:
        """For `sample(step_callback=...)`: a run's first step refreshes cache-dit's context."""
        if self._model is None:
            raise RuntimeError(f"peer {self.name!r} is not applied")
        if i == 0:
            import cache_dit

            cache, calib = self.configs()
            kw = dict(cache_config=cache) | ({"calibrator_config": calib} if calib is not None else {})
            with _quiet():
                cache_dit.refresh_context(self._model, **kw)

    def remove(self, model: torch.nn.Module) -> None:
        """`cache_dit.disable_cache`, then drop the attributes and submodule references it leaves behind."""
        if self._model is None:
            return
        if model is not self._model:
            raise ValueError(f"peer {self.name!r} is applied to another model")
        import cache_dit

        with _quiet():
            if self._adapter is not None and getattr(model, "_is_cached", False):
                with contextlib.suppress(Exception):  # the stats are a report, never a reason to keep the cache
                    stats = cache_dit.summary(model, logging=False)
                    self.cached_steps = list(stats[0].cached_steps) if stats else []
                cache_dit.disable_cache(self._adapter)
        for m in list(model.modules()):
            attrs, subs = self._before.get(id(m), (None, None))
            if attrs is None:
                continue
            for k in set(m._modules) - subs:
                del m._modules[k]
            for k in set(vars(m)) - attrs:
                delattr(m, k)
        self._model, self._adapter, self._before = None, None, {}


def cachedit(residual_diff_threshold: float = 0.08, **knobs) -> CacheDitPeer:
    """``CacheDitPeer(residual_diff_threshold, **knobs)``: the PEERS factory (see CacheDitPeer for the knobs)."""
    return CacheDitPeer(residual_diff_threshold=residual_diff_threshold, **knobs)
