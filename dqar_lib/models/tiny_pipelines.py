"""Tiny random diffusers pipelines (SD3, Flux) around the tiny transformers of `tiny_families`, for tests that run
a whole pipeline offline: a one-block VAE, no text encoders, caption embeddings in place of prompts."""

from __future__ import annotations

import torch

from .pipelines import tiny_vae
from .tiny_families import FAMILIES, POOLED_DIM, TEXT_DIM, TEXT_TOKENS

_TRANSFORMER = {"StableDiffusion3Pipeline": "SD3Transformer2DModel", "FluxPipeline": "FluxTransformer2DModel"}


def tiny_pipeline(name: str):
    """A random diffusers pipeline around the tiny `name` transformer ("StableDiffusion3Pipeline" or
    "FluxPipeline"), with a one-block VAE and no text encoders, and the keyword arguments of one call: caption
    embeddings stand in for the prompt, so nothing is tokenized or downloaded::

        pipe, kwargs = tiny_pipeline("FluxPipeline")
        with dqar_lib.dqar(pipe, "always"):
            latents = pipe(**kwargs, num_inference_steps=4).images
    """
    if name not in _TRANSFORMER:
        raise ValueError(f"no tiny pipeline {name!r}; known: {', '.join(_TRANSFORMER)}")
    diffusers = _quiet_diffusers()
    spec = FAMILIES[_TRANSFORMER[name]]
    g = torch.Generator().manual_seed(2)
    parts = dict(transformer=spec.make(), scheduler=spec.scheduler(), vae=tiny_vae(shift_factor=0.0).eval(),
                 text_encoder=None, tokenizer=None, text_encoder_2=None, tokenizer_2=None)
    emb = dict(prompt_embeds=torch.randn(1, TEXT_TOKENS, TEXT_DIM, generator=g),
               pooled_prompt_embeds=torch.randn(1, POOLED_DIM, generator=g), output_type="latent")
    if name == "StableDiffusion3Pipeline":
        pipe = diffusers.StableDiffusion3Pipeline(**parts, text_encoder_3=None, tokenizer_3=None)
        emb.update(negative_prompt_embeds=torch.randn(1, TEXT_TOKENS, TEXT_DIM, generator=g),
                   negative_pooled_prompt_embeds=torch.randn(1, POOLED_DIM, generator=g), height=16, width=16)
    else:
        pipe = diffusers.FluxPipeline(**parts)
        emb.update(height=32, width=32)
    pipe.set_progress_bar_config(disable=True)
    return pipe, emb


def _quiet_diffusers():
    """diffusers with its pipeline classes imported while transformers' logging is at errors only: importing them
    loads image processors that warn on stderr when torchvision is missing (the book fails on stderr)."""
    import diffusers
    from transformers.utils import logging as tlog

    prev = tlog.get_verbosity()
    tlog.set_verbosity_error()
    try:
        diffusers.StableDiffusion3Pipeline, diffusers.FluxPipeline  # noqa: B018 (the lazy import)
    finally:
        tlog.set_verbosity(prev)
    return diffusers
