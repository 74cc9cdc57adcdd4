"""diffusers' own cache methods (and cache-dit's DBCache) as DQAR's peers: attach to a DiT, drive, remove exactly.

    peer = PEERS["pab"]()
    res = run_method(model, peer, labels, num_steps=20)   # prepare, apply, sample(step_callback=...), remove

A Peer is a `dqar_lib.evaluation.methods.Method`, so `run_method` and `bench_sampling` run it like DQAR.

A Peer feeds its hooks what a diffusers pipeline would: the current timestep and, around each model call, a
`CacheContext` (step index, step count, timestep, sigma). DiT is no `CacheMixin`, so the context is set the way
`CacheMixin.cache_context` sets it; `sample` runs CFG as one batch, so each step is one call in one context.
A run's first step resets every stateful hook, so each run starts fresh.
`peer_status()` tries every method on a tiny DiT, the ones that do not run included, and says why.
"""

from __future__ import annotations

import ast
import contextlib
import inspect
import io
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from diffusers.hooks import faster_cache as _fc
from diffusers.hooks import first_block_cache as _fbc
from diffusers.hooks import mag_cache as _mag
from diffusers.hooks import pyramid_attention_broadcast as _pab
from diffusers.hooks import sea_cache as _sea
from diffusers.hooks import taylorseer_cache as _ts
from diffusers.hooks.hooks import CacheContext, HookRegistry, _set_cache_context

from ..models.sampling import make_scheduler, sample
from .cachedit import cachedit
from .methods import Method, run_method

_ALPHA_BAR = make_scheduler("ddim").alphas_cumprod  # DiT's schedule, shared by both samplers (sampling.py)
_DIT_SELF_ATTENTION = r"transformer_blocks\.\d+\.attn1"
_STEPS = inspect.signature(sample).parameters["num_steps"].default


def flow_sigma(t) -> float:
    """SeaCache's sigma in [0, 1] for DDPM t: x_t/(a+s) = (1-sigma) x_0 + sigma eps, a, s = sqrt(abar), sqrt(1-abar)."""
    ab = _ALPHA_BAR[int(t)]
    a, s = ab.sqrt(), (1 - ab).sqrt()
    return float(s / (a + s))


@dataclass
class Peer(Method):
    """One diffusers cache method: `make_config(peer)` builds its config, `attach(model, config)` applies it,
    `hooks` are the hook names it registers (removed by name). `params` records the settings for reports.

    A second `apply` while applied, or onto a model that already holds one of its hook names (another instance
    of the same peer), is a RuntimeError that leaves the attached one working."""

    name: str
    make_config: Callable
    attach: Callable
    hooks: tuple[str, ...]
    params: dict = field(default_factory=dict)
    num_steps: int = _STEPS
    t: int = 1000
    _model: torch.nn.Module | None = field(default=None, repr=False)
    _before: set = field(default_factory=set, repr=False)

    def prepare(self, model, labels, **sample_kwargs) -> None:
        """Learn the run's step count (MagCache also calibrates here); call before apply."""
        self.num_steps = sample_kwargs.get("num_steps", _STEPS)

    def apply(self, model: torch.nn.Module) -> None:
        """Attach the hooks (all or none: a failing attach is undone)."""
        if self._model is not None:
            raise RuntimeError(f"peer {self.name!r} is already applied; call remove first")
        taken = {h for m in model.modules() if hasattr(m, "_diffusers_hook") for h in m._diffusers_hook.hooks}
        if taken & set(self.hooks):
            raise RuntimeError(f"peer {self.name!r}: the model already holds its diffusers hooks "
                               f"{sorted(taken & set(self.hooks))}; remove the method that attached them first")
        self._model = model
        self._before = {id(m) for m in model.modules() if hasattr(m, "_diffusers_hook") or "forward" in vars(m)}
        try:
            self.attach(model, self.make_config(self))
        except Exception:
            self.remove(model)
            raise
        HookRegistry.check_if_exists_or_initialize(model).invalidate_child_registries_cache()

    def step_callback(self, i: int, t) -> None:
        """For `sample(step_callback=...)`: reset at a run's first step, then publish step i and timestep t."""
        model = self._model
        if model is None:
            raise RuntimeError(f"peer {self.name!r} is not applied")
        registry = HookRegistry.check_if_exists_or_initialize(model)
        if i == 0:
            registry.reset_stateful_hooks()
        self.t = int(t)
        ctx = CacheContext("cfg_batch", step_index=i, num_inference_steps=self.num_steps, timestep=self.t,
                           sigma=flow_sigma(self.t))
        _set_cache_context(model, ctx)

    def remove(self, model: torch.nn.Module) -> None:
        """Remove the hooks by name, then drop the registries and forward attributes they left behind."""
        if self._model is None:
            return
        if model is not self._model:
            raise ValueError(f"peer {self.name!r} is applied to another model")
        registry = HookRegistry.check_if_exists_or_initialize(model)
        for name in self.hooks:
            registry.remove_hook(name, recurse=True)
        for m in model.modules():
            if id(m) in self._before:
                continue
            if hasattr(m, "_diffusers_hook") and not m._diffusers_hook.hooks:
                del m._diffusers_hook
            fwd = vars(m).get("forward")
            if getattr(fwd, "__func__", None) is type(m).forward and fwd.__self__ is m:
                del m.forward  # remove_hook leaves the class's bound forward as an instance attribute
        if hasattr(model, "_diffusers_hook"):  # a registry that was there before: its child list is stale
            model._diffusers_hook.invalidate_child_registries_cache()
        self._model = None


@dataclass
class MagCachePeer(Peer):
    """MagCache with its mag_ratios from its own calibration mode, measured once per model and setting."""

    mag_ratios: list[float] | None = None
    _calibrated: dict = field(default_factory=dict, repr=False)

    def prepare(self, model, labels, **sample_kwargs) -> None:
        super().prepare(model, labels, **sample_kwargs)
        setting = {k: v for k, v in sample_kwargs.items() if k not in ("seed", "progress")}
        key = (id(model), tuple(torch.as_tensor(labels).reshape(-1).tolist()), tuple(sorted(setting.items())))
        if key not in self._calibrated:
            self._calibrated[key] = calibrate_magcache(model, labels, **sample_kwargs)
        self.mag_ratios = self._calibrated[key]


def calibrate_magcache(model, labels, seed: int = 0, **sample_kwargs) -> list[float]:
    """Run MagCache's calibrate=True mode (no skipping) on seed+1 and return the ratios it prints."""
    num_steps = sample_kwargs.get("num_steps", _STEPS)
    peer = Peer("magcache-calibration", lambda p: _mag.MagCacheConfig(calibrate=True, num_inference_steps=p.num_steps),
                _mag.apply_mag_cache, (_mag._MAG_CACHE_LEADER_BLOCK_HOOK, _mag._MAG_CACHE_BLOCK_HOOK))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        run_method(model, peer, labels, seed=seed + 1, **sample_kwargs)
    lists = [line for line in out.getvalue().splitlines() if line.startswith("[") and line.endswith("]")]
    if not lists:
        raise RuntimeError(f"MagCache calibration printed no ratios; its output was: {out.getvalue()!r}")
    ratios = [float(r) for r in ast.literal_eval(lists[-1])]
    if len(ratios) != num_steps:
        raise RuntimeError(f"MagCache calibration gave {len(ratios)} ratios for {num_steps} steps")
    return ratios


def pab(skip_range: int = 2, timestep_range: tuple[int, int] = (100, 800)) -> Peer:
    """Pyramid Attention Broadcast on DiT's self-attention (DiT has no cross- or temporal attention).

    skip_range: compute each self-attention every `skip_range` calls, reuse it in between
        (spatial_attention_block_skip_range; 2 as in apply_pyramid_attention_broadcast's example, and the value
        diffusers falls back to when none is given).
    timestep_range: skip only while timestep_range[0] < t < timestep_range[1]
        (spatial_attention_timestep_skip_range; (100, 800) is the config default).
    """
    return Peer("pab", lambda p: _pab.PyramidAttentionBroadcastConfig(
        spatial_attention_block_skip_range=skip_range, spatial_attention_timestep_skip_range=timestep_range,
        current_timestep_callback=lambda: p.t), _pab.apply_pyramid_attention_broadcast,
        (_pab._PYRAMID_ATTENTION_BROADCAST_HOOK,), dict(skip_range=skip_range, timestep_range=timestep_range))


def fbc(threshold: float = 0.2) -> Peer:
    """First Block Cache: run block 0; if its residual changed by less than `threshold` (relative mean absolute
    difference to the previous step's) reuse the other blocks' cached residual.

    threshold: 0.2, as in apply_first_block_cache's example (CogView4). The config default 0.05 never skips on
        the CIFAR-10 DiT at 20 DDIM steps: its first-block residual moves by 0.09-0.36 between steps.
    """
    return Peer("fbc", lambda p: _fbc.FirstBlockCacheConfig(threshold=threshold), _fbc.apply_first_block_cache,
                (_fbc._FBC_LEADER_BLOCK_HOOK, _fbc._FBC_BLOCK_HOOK), dict(threshold=threshold))


def taylorseer(cache_interval: int = 5, disable_cache_before_step: int = 3, max_order: int = 1,
               taylor_factors_dtype: torch.dtype = torch.float32) -> Peer:
    """TaylorSeer on DiT's self-attention: full steps refresh Taylor factors, the others predict the output.

    cache_interval, disable_cache_before_step, max_order: TaylorSeerCacheConfig's defaults (5, 3, 1).
    taylor_factors_dtype: float32, as in apply_taylorseer_cache's example (the config default bfloat16 would
    round an fp32 model's predictions). cache_identifiers names DiT's `transformer_blocks.N.attn1`: the
    default patterns (`^transformer_blocks.*attn`, matched with re.fullmatch) hook nothing on DiT.
    """
    kw = dict(cache_interval=cache_interval, disable_cache_before_step=disable_cache_before_step, max_order=max_order)
    return Peer("taylorseer", lambda p: _ts.TaylorSeerCacheConfig(
        **kw, taylor_factors_dtype=taylor_factors_dtype, cache_identifiers=[_DIT_SELF_ATTENTION]),
        _ts.apply_taylorseer_cache, (_ts._TAYLORSEER_CACHE_HOOK,),
        {**kw, "taylor_factors_dtype": str(taylor_factors_dtype)})


def _dit_latents(module, args, kwargs) -> list[torch.Tensor]:
    """SeaCache's raw_vision_callback for DiT: each image's input latent as (C, T=1, H, W)."""
    x = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]  # (B, C, H, W)
    return list(x.unsqueeze(2).unbind(0))


def seacache(threshold: float = 0.25, residual_order: int = 1, retention_steps: int = 1, cache_end_steps: int = 1,
             max_consecutive_cached: int = 2, power_exp: float = 3.0) -> Peer:
    """SeaCache: reuse (extrapolate) the block stack's residual while a spectrally filtered input changes little.

    All parameters are SeaCacheConfig's defaults. DiT gets the generic path: the indicator is built from each
    image's input latent (_dit_latents) and sigma is DDPM t mapped to flow matching (flow_sigma).
    """
    kw = dict(threshold=threshold, residual_order=residual_order, retention_steps=retention_steps,
              cache_end_steps=cache_end_steps, max_consecutive_cached=max_consecutive_cached, power_exp=power_exp)
    return Peer("seacache", lambda p: _sea.SeaCacheConfig(**kw, raw_vision_callback=_dit_latents), _sea.apply_sea_cache,
                (_sea._SEA_CACHE_POST_NORM_HOOK, _sea._SEA_CACHE_BLOCK_HOOK, _sea._SEA_CACHE_LEADER_BLOCK_HOOK,
                 _sea._SEA_CACHE_ROOT_HOOK), kw)


def magcache(threshold: float = 0.06, max_skip_steps: int = 3, retention_ratio: float = 0.2) -> Peer:
    """MagCache, calibrate-then-run: skip blocks while the accumulated residual-magnitude error stays small.

    threshold, max_skip_steps, retention_ratio: MagCacheConfig's defaults. mag_ratios are model-specific
    (MagCacheConfig() without them raises); prepare() measures them with MagCache's own calibrate=True mode on
    the same model, labels, steps, scheduler and guidance with seed+1, once per setting.
    """
    kw = dict(threshold=threshold, max_skip_steps=max_skip_steps, retention_ratio=retention_ratio)
    return MagCachePeer("magcache", lambda p: _mag.MagCacheConfig(
        **kw, num_inference_steps=p.num_steps, mag_ratios=p.mag_ratios),
                        _mag.apply_mag_cache, (_mag._MAG_CACHE_LEADER_BLOCK_HOOK, _mag._MAG_CACHE_BLOCK_HOOK), kw)


def fastercache() -> Peer:
    """FasterCache with its config defaults and DiT's tensor_format "BCHW"; for peer_status, not in PEERS.

    It fails on DiT: its denoiser hook halves only hidden_states/timestep/masks when it skips the unconditional
    branch, not DiT's class_labels; and it takes the batch as [uncond, cond] where `sample` puts cond first.
    """
    return Peer("fastercache", lambda p: _fc.FasterCacheConfig(
        current_timestep_callback=lambda: p.t, tensor_format="BCHW"),
                _fc.apply_faster_cache, (_fc._FASTER_CACHE_DENOISER_HOOK, _fc._FASTER_CACHE_BLOCK_HOOK))


# name -> factory(**params) -> Peer (cachedit: the cache-dit package's DBCache, dqar_lib.evaluation.cachedit)
PEERS: dict[str, Callable] = dict(pab=pab, fbc=fbc, taylorseer=taylorseer, seacache=seacache, magcache=magcache,
                                  cachedit=cachedit)
UNRUNNABLE: dict[str, Callable] = dict(fastercache=fastercache)  # tried by peer_status only


def get_peer(name: str, **params) -> Peer:
    """``PEERS[name](**params)``; an unknown name is a ValueError listing the known peers."""
    if name not in PEERS:
        raise ValueError(f"unknown peer {name!r}; known peers: {sorted(PEERS)}")
    return PEERS[name](**params)


def peer_status(num_steps: int = 4) -> dict[str, str]:
    """Try every method (PEERS and UNRUNNABLE) on a tiny DiT with CFG: "ok", or the exception it raised.

    What a peer logs or warns while it is tried is swallowed: the status is the finding, not the noise."""
    import warnings

    from diffusers.utils import logging as dlog

    from ..models.zoo import tiny_dit

    status = {}
    level = dlog.get_verbosity()
    dlog.set_verbosity_error()
    try:
        for name, factory in {**PEERS, **UNRUNNABLE}.items():
            try:
                with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
                    warnings.simplefilter("ignore")
                    run_method(tiny_dit(), factory(), [1, 2], num_steps=num_steps, guidance_scale=1.5,
                               progress=False)
                status[name] = "ok"
            except Exception as e:  # the reason is the result
                status[name] = f"{type(e).__name__}: {e}"
    finally:
        dlog.set_verbosity(level)
    return status
