"""Sampling with DDIM or DPM-Solver, CFG in one batch, DQAR optionally attached.

DiT-style models are class-conditional (`class_labels`); PixArt-style models take text embeddings
(`prompt_embeds`, e.g. T5 features computed elsewhere; random ones time the architecture).
"""

from __future__ import annotations

import json
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler
from tqdm.auto import tqdm

from ..method.config import DQARConfig
from ..method.controller import DQARController
from ..method.files import atomic_write
from ..method.hooks import apply_dqar, get_controller, remove_dqar
from ..method.noise import NOISE_SCHEDULE

SCHEDULERS = ("ddim", "dpm")


def make_scheduler(name: str, pixel_space: bool = True):
    """A fresh DDIM or DPM-Solver++ (2nd order) scheduler on DiT's noise schedule."""
    if name == "ddim":
        return DDIMScheduler(**NOISE_SCHEDULE, clip_sample=pixel_space, set_alpha_to_one=False)
    if name == "dpm":
        return DPMSolverMultistepScheduler(**NOISE_SCHEDULE, algorithm_type="dpmsolver++", solver_order=2)
    raise ValueError(f"scheduler must be one of {SCHEDULERS}, got {name!r}")


@dataclass
class SampleResult:
    images: torch.Tensor | None  # (N, 3, H, W) float in [0, 1]; None for latent models without a VAE
    latents: torch.Tensor  # (N, C, H, W) the final x_0
    controller: DQARController | None
    stats: dict = field(default_factory=dict)
    seconds: float = 0.0

    def save(self, out_dir: str | Path, prefix: str = "image") -> list[Path]:
        """Write each image as `{prefix}_{i:03d}.png` and `{prefix}s.json` (seconds, DQAR's stats, the file names)
        into `out_dir`, each atomically; returns the PNG paths (none for a latent model sampled without a VAE)."""
        from PIL import Image

        out_dir = Path(out_dir)
        paths = []
        for i, img in enumerate([] if self.images is None else self.images):  # img (3, H, W) in [0, 1]
            path = out_dir / f"{prefix}_{i:03d}.png"
            with atomic_write(path, "wb") as f:
                Image.fromarray(img.mul(255).round().byte().permute(1, 2, 0).numpy()).save(f, format="PNG")
            paths.append(path)
        meta = dict(images=[p.name for p in paths], latent_shape=list(self.latents.shape), seconds=self.seconds,
                    stats=self.stats)
        with atomic_write(out_dir / f"{prefix}s.json") as f:
            json.dump(meta, f, indent=1, default=float)
        return paths


def default_guidance(model: torch.nn.Module) -> float:
    """The guidance scale recorded with a shipped model (dqar_model.json), else DiT's 1.5."""
    return float(getattr(model, "dqar_meta", {}).get("guidance_scale", 1.5))


def _check(num_steps, guidance_scale, scheduler) -> None:
    if not isinstance(num_steps, int) or num_steps <= 0:
        raise ValueError(f"num_steps must be a positive integer, got {num_steps!r}")
    if scheduler not in SCHEDULERS:
        raise ValueError(f"scheduler must be one of {SCHEDULERS}, got {scheduler!r}")
    if guidance_scale < 1.0:
        raise ValueError(f"guidance_scale must be >= 1 (1 disables guidance), got {guidance_scale}")


def is_text_conditioned(model: torch.nn.Module) -> bool:
    """PixArt-style (cross-attention on caption embeddings) rather than DiT-style (class labels)."""
    return getattr(model.config, "caption_channels", None) is not None


def conditioning(model: torch.nn.Module, class_labels=None, prompt_embeds=None, negative_embeds=None,
                 use_cfg: bool = False, prompt_mask=None, negative_mask=None) -> tuple[int, dict]:
    """The number of images and the model's conditioning kwargs for one (CFG-doubled, conditional first) batch.

    DiT: `class_labels` (N,) ints in [0, num_classes); the null class is the unconditional half.
    PixArt: `prompt_embeds` (N, T, caption_channels); `negative_embeds` (1 or N, T, caption_channels) is the
    unconditional half, zeros when None (a pipeline would pass the embedding of the empty prompt).
    `prompt_mask` (N, T) / `negative_mask` (1 or N, T), 1 on real tokens, become `encoder_attention_mask` (padding
    then attends nowhere, and tau(p) reads p from the mask); negative_mask defaults to prompt_mask.
    """
    if is_text_conditioned(model):
        if class_labels is not None:
            raise ValueError(f"{type(model).__name__} is text-conditioned: pass prompt_embeds, not class_labels")
        C = model.config.caption_channels
        is_tensor = isinstance(prompt_embeds, torch.Tensor)
        if not is_tensor or prompt_embeds.ndim != 3 or prompt_embeds.shape[-1] != C:
            got = tuple(prompt_embeds.shape) if is_tensor else type(prompt_embeds).__name__
            raise ValueError(f"prompt_embeds must be a (N, T, {C}) tensor for {type(model).__name__}, got {got}")
        n = prompt_embeds.shape[0]
        emb = prompt_embeds
        if use_cfg:
            neg = torch.zeros_like(prompt_embeds[:1]) if negative_embeds is None else negative_embeds
            if neg.shape[1:] != prompt_embeds.shape[1:] or neg.shape[0] not in (1, n):
                raise ValueError(f"negative_embeds must be (1 or {n}, {prompt_embeds.shape[1]}, {C}), "
                                 f"got {tuple(neg.shape)}")
            emb = torch.cat([prompt_embeds, neg.expand_as(prompt_embeds)])
        out = dict(encoder_hidden_states=emb, added_cond_kwargs={"resolution": None, "aspect_ratio": None})
        if prompt_mask is not None:
            mask = _mask(prompt_mask, prompt_embeds.shape[:2], "prompt_mask")
            if use_cfg:
                neg_mask = mask if negative_mask is None else \
                    _mask(negative_mask, (negative_mask.shape[0], prompt_embeds.shape[1]), "negative_mask")
                mask = torch.cat([mask, neg_mask.expand_as(mask)])
            out["encoder_attention_mask"] = mask
        return n, out
    if prompt_embeds is not None:
        raise ValueError(f"{type(model).__name__} is class-conditional: pass class_labels, not prompt_embeds")
    num_classes = getattr(model.config, "num_embeds_ada_norm", None)
    if num_classes is None:
        raise ValueError(f"{type(model).__name__} is neither class- nor text-conditioned; sample() needs a DiT- or "
                         "PixArt-style model")
    labels = class_label_tensor(class_labels, num_classes, type(model).__name__)
    return labels.numel(), dict(class_labels=torch.cat([labels, torch.full_like(labels, num_classes)]) if use_cfg
                                else labels)


def class_label_tensor(class_labels, num_classes: int, owner: str = "this model") -> torch.Tensor:
    """`class_labels` (an int, a list of ints or an integer tensor) as a 1-d long tensor, each checked to be an
    integer in [0, num_classes); anything else is a ValueError in one sentence naming the bad value and the range."""
    rng = f"integers in [0, {num_classes}) ({owner} has {num_classes} classes)"
    if isinstance(class_labels, torch.Tensor) or hasattr(class_labels, "dtype"):  # torch or numpy, arrays or scalars
        kind = str(class_labels.dtype)
        if "int" not in kind:
            raise ValueError(f"class_labels must be {rng}; got an array of {kind}")
        values = class_labels.reshape(-1).tolist()
    else:
        values = list(class_labels) if isinstance(class_labels, (list, tuple, range)) else [class_labels]
    if class_labels is None or not values:
        raise ValueError(f"class_labels must be a non-empty list of {rng}; got {class_labels!r}")
    for v in values:
        if hasattr(v, "dtype") and "int" in str(v.dtype) and getattr(v, "ndim", 1) == 0:
            v = v.item()  # a numpy or torch integer scalar in a list
        if not isinstance(v, int) or isinstance(v, bool):
            raise ValueError(f"class_labels must be {rng}; got {v!r} ({type(v).__name__})")
        if not 0 <= v < num_classes:
            raise ValueError(f"class_labels must be {rng}; got {v}")
    return torch.tensor([int(v) for v in values], dtype=torch.long)  # (N,)


def _mask(mask, shape, name: str) -> torch.Tensor:
    mask = torch.as_tensor(mask)
    if tuple(mask.shape) != tuple(shape):
        raise ValueError(f"{name} must be {tuple(shape)} (one 0/1 per caption token), got {tuple(mask.shape)}")
    return mask


_WARNED: set = set()


def _warn_no_reuse(model: torch.nn.Module, ctl: DQARController) -> None:
    """Say once per (model class, config) that DQAR reused nothing, naming the rule that refused."""
    why = ctl.refusal()
    key = (type(model).__name__, ctl.config)
    if why is None or key in _WARNED:
        return
    _WARNED.add(key)
    warnings.warn(f"DQAR reused nothing on this {type(model).__name__}: {why}. Fit the gates to this model with "
                  "dqar_lib.calibrate(model, budget=...), or relax them (DQARConfig.preset(name, tau=...)).",
                  RuntimeWarning, stacklevel=4)  # the caller of sample (under no_grad)


@torch.no_grad()
def sample(model: torch.nn.Module, class_labels=None, num_steps: int = 50, guidance_scale: float | None = None,
           seed: int = 0, scheduler: str = "ddim", dqar: DQARConfig | str | None = None, progress: bool = True,
           vae=None, step_callback=None, compile: bool = False, compile_options: dict | None = None,
           prompt_embeds: torch.Tensor | None = None, negative_embeds: torch.Tensor | None = None,
           prompt_mask: torch.Tensor | None = None, negative_mask: torch.Tensor | None = None) -> SampleResult:
    """Sample one image per label (DiT) or per prompt embedding (PixArt; see `conditioning`).

    `dqar` (a DQARConfig or preset name) is attached for this call only.

    Noise comes from a CPU generator seeded with `seed`, so a seed gives the same start on any device.
    With guidance_scale > 1 the conditional and unconditional halves run in one batch (conditional first).
    `step_callback(i, t)` runs before each model call (peers' caches read the current step from it).
    `compile` / `compile_options` go to `apply_dqar` (regional compile of DQAR's compute paths).
    A DQAR run that reuses nothing warns once (per model class and config), naming the gate that refused.
    """
    device, dtype = next(model.parameters()).device, next(model.parameters()).dtype
    guidance_scale = default_guidance(model) if guidance_scale is None else float(guidance_scale)
    _check(num_steps, guidance_scale, scheduler)
    use_cfg = guidance_scale > 1.0  # classifier-free guidance: both halves in one batch
    n, cond = conditioning(model, class_labels, prompt_embeds, negative_embeds, use_cfg, prompt_mask, negative_mask)
    cond = {k: v.to(device, dtype if v.is_floating_point() else v.dtype) if isinstance(v, torch.Tensor) else v
            for k, v in cond.items()}  # labels stay integers, caption embeddings take the model's dtype
    sched = make_scheduler(scheduler, pixel_space=model.config.in_channels == 3)
    sched.set_timesteps(num_steps)
    c, size = model.config.in_channels, model.config.sample_size
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((n, c, size, size), generator=g).to(device, dtype) * sched.init_noise_sigma
    attached = dqar is not None
    ctl = apply_dqar(model, dqar, scheduler=sched, compile=compile, compile_options=compile_options) if attached \
        else get_controller(model)
    if ctl is not None:
        ctl.reset()
    t0 = time.perf_counter()
    try:
        for i, t in enumerate(tqdm(sched.timesteps, desc=f"{scheduler}-{num_steps}", disable=not progress,
                                   leave=False)):
            if step_callback is not None:
                step_callback(i, t)
            x_in = torch.cat([x, x]) if use_cfg else x
            out = model(x_in, timestep=t.expand(x_in.shape[0]).to(device), **cond).sample
            eps = out[:, :c]
            if use_cfg:
                e_c, e_u = eps.chunk(2)
                eps = e_u + guidance_scale * (e_c - e_u)
            x = sched.step(eps, t, x).prev_sample
        if device.type == "cuda":
            torch.cuda.synchronize()
        stats = ctl.stats() if ctl is not None else {}
        if ctl is not None:
            _warn_no_reuse(model, ctl)
    finally:
        if attached:
            remove_dqar(model)
    seconds = time.perf_counter() - t0
    images = None
    if vae is not None:
        images = (vae.decode(x / vae.config.scaling_factor).sample.float().clamp(-1, 1) + 1) / 2
    elif c == 3:
        images = (x.float().clamp(-1, 1) + 1) / 2
    return SampleResult(images.cpu() if images is not None else None, x.cpu(), ctl, stats, seconds)
