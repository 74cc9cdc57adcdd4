"""One tiny random transformer per diffusers image-transformer family, built in code (seeded), with its inputs::

    spec = FAMILIES["FluxTransformer2DModel"]
    model = spec.make()                                  # a few layers, width 16: a CPU forward in milliseconds
    scheduler = spec.scheduler(); scheduler.set_timesteps(4)
    out = model(**spec.inputs(float(scheduler.timesteps[0]))).sample

`inputs(t)` takes t on the scheduler's 0..1000 scale and passes it as the family's pipeline does (Flux-style
families get t / 1000, Lumina's the rising 1 - t / 1000). The text embeddings and the first latents come
from a fixed seed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

B, TEXT_TOKENS, TEXT_DIM, POOLED_DIM = 2, 5, 16, 8  # batch (a CFG pair), caption tokens, caption width, pooled


@dataclass(frozen=True)
class FamilySpec:
    """How to build one family's tiny model, call it at timestep t, and which scheduler its pipelines use."""

    make: Callable[[], torch.nn.Module]
    inputs: Callable[[float], dict]
    scheduler: Callable[[], object]
    text: bool = True  # text-conditioned (joint or cross attention) rather than class labels


def _randn(*shape):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(1))


def _seeded(cls, **config):
    def make():
        torch.manual_seed(0)
        return cls(**config).eval()
    return make


def _ddim():
    from .sampling import make_scheduler

    return make_scheduler("ddim", pixel_space=False)


def _flow():
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler()


def _t(t: float) -> torch.Tensor:
    return torch.full((B,), float(t))


def _dit():
    from .zoo import tiny_dit

    return tiny_dit(depth=2)


def _pixart():
    from .zoo import tiny_pixart

    return tiny_pixart(depth=2)


def _sd3():
    from diffusers import SD3Transformer2DModel

    # two joint blocks; the first with SD3.5's second (image-only) self-attention, the last text-free (pre_only)
    return _seeded(SD3Transformer2DModel, sample_size=8, patch_size=2, in_channels=4, out_channels=4, num_layers=2,
                   attention_head_dim=8, num_attention_heads=2, joint_attention_dim=TEXT_DIM,
                   caption_projection_dim=16, pooled_projection_dim=POOLED_DIM, pos_embed_max_size=16,
                   dual_attention_layers=(0,))()


def _flux():
    from diffusers import FluxTransformer2DModel

    return _seeded(FluxTransformer2DModel, patch_size=1, in_channels=16, num_layers=2, num_single_layers=2,
                   attention_head_dim=8, num_attention_heads=2, joint_attention_dim=TEXT_DIM,
                   pooled_projection_dim=POOLED_DIM, axes_dims_rope=(2, 2, 4))()


def _chroma():
    from diffusers import ChromaTransformer2DModel

    return _seeded(ChromaTransformer2DModel, patch_size=1, in_channels=16, num_layers=1, num_single_layers=1,
                   attention_head_dim=8, num_attention_heads=2, joint_attention_dim=TEXT_DIM, axes_dims_rope=(2, 2, 4),
                   approximator_num_channels=8, approximator_hidden_dim=16, approximator_layers=1)()


def _qwen():
    from diffusers import QwenImageTransformer2DModel

    return _seeded(QwenImageTransformer2DModel, patch_size=2, in_channels=16, out_channels=4, num_layers=2,
                   attention_head_dim=8, num_attention_heads=2, joint_attention_dim=TEXT_DIM, guidance_embeds=False,
                   axes_dims_rope=(4, 2, 2))()


def _auraflow():
    from diffusers import AuraFlowTransformer2DModel

    return _seeded(AuraFlowTransformer2DModel, sample_size=8, patch_size=2, in_channels=4, out_channels=4,
                   num_mmdit_layers=1, num_single_dit_layers=1, attention_head_dim=8, num_attention_heads=2,
                   caption_projection_dim=16, joint_attention_dim=TEXT_DIM, pos_embed_max_size=16)()


def _sana():
    from diffusers import SanaTransformer2DModel

    return _seeded(SanaTransformer2DModel, patch_size=1, in_channels=4, out_channels=4, num_layers=2,
                   attention_head_dim=4, num_attention_heads=2, num_cross_attention_heads=2,
                   cross_attention_head_dim=4, cross_attention_dim=8, caption_channels=TEXT_DIM, sample_size=8)()


def _hunyuan():
    from diffusers import HunyuanDiT2DModel

    return _seeded(HunyuanDiT2DModel, sample_size=8, patch_size=2, in_channels=4, num_layers=4,
                   attention_head_dim=8, num_attention_heads=2, cross_attention_dim=TEXT_DIM,
                   cross_attention_dim_t5=TEXT_DIM, pooled_projection_dim=8, hidden_size=16, text_len=TEXT_TOKENS,
                   text_len_t5=TEXT_TOKENS)()


def _cogview(cls_name):
    def make():
        import diffusers

        return _seeded(getattr(diffusers, cls_name), patch_size=2, in_channels=4, num_layers=2, attention_head_dim=8,
                       num_attention_heads=2, out_channels=4, text_embed_dim=TEXT_DIM, time_embed_dim=8,
                       condition_dim=4, pos_embed_max_size=16, sample_size=8,
                       **({"rope_axes_dim": (4, 4)} if cls_name == "CogView4Transformer2DModel" else {}))()
    return make


def _lumina2():
    from diffusers import Lumina2Transformer2DModel

    return _seeded(Lumina2Transformer2DModel, sample_size=8, patch_size=2, in_channels=4, hidden_size=16, num_layers=2,
                   num_refiner_layers=1, num_attention_heads=2, num_kv_heads=2, multiple_of=16,
                   axes_dim_rope=(4, 2, 2), axes_lens=(64, 16, 16), cap_feat_dim=TEXT_DIM)()


def _lumina_next():
    from diffusers import LuminaNextDiT2DModel

    return _seeded(LuminaNextDiT2DModel, sample_size=8, patch_size=2, in_channels=4, hidden_size=16, num_layers=2,
                   num_attention_heads=2, num_kv_heads=2, multiple_of=16, cross_attention_dim=TEXT_DIM,
                   learn_sigma=True)()


def _hunyuan_rope():
    from diffusers.models.embeddings import get_2d_rotary_pos_embed

    return get_2d_rotary_pos_embed(8, ((0, 0), (4, 4)), (4, 4))  # head dim 8 over the 4 x 4 patch grid


def _lumina_rope():
    from diffusers.models.embeddings import get_2d_rotary_pos_embed_lumina

    return get_2d_rotary_pos_embed_lumina(8, 16, 16)  # head dim 8


def _flux2():
    from diffusers import Flux2Transformer2DModel

    return _seeded(Flux2Transformer2DModel, patch_size=1, in_channels=4, num_layers=1, num_single_layers=1,
                   attention_head_dim=16, num_attention_heads=2, joint_attention_dim=TEXT_DIM,
                   timestep_guidance_channels=256, axes_dims_rope=(4, 4, 4, 4))()


def _flux3():
    from diffusers import Flux3Transformer2DModel

    return _seeded(Flux3Transformer2DModel, in_channels=4, cond_in_channels=4, num_layers=1, num_single_layers=1,
                   attention_head_dim=16, num_attention_heads=2, joint_attention_dim=TEXT_DIM,
                   axes_dims_rope=(4, 4, 4, 4))()


def _bria():
    from diffusers import BriaTransformer2DModel

    return _seeded(BriaTransformer2DModel, patch_size=1, in_channels=4, num_layers=1, num_single_layers=1,
                   attention_head_dim=8, num_attention_heads=2, joint_attention_dim=TEXT_DIM,
                   pooled_projection_dim=None, axes_dims_rope=(2, 2, 4))()


def _bria_fibo():
    from diffusers import BriaFiboTransformer2DModel

    return _seeded(BriaFiboTransformer2DModel, patch_size=1, in_channels=4, num_layers=1, num_single_layers=1,
                   attention_head_dim=8, num_attention_heads=2, joint_attention_dim=TEXT_DIM, axes_dims_rope=(2, 2, 4),
                   text_encoder_dim=TEXT_DIM)()


def _hunyuan_image():
    from diffusers import HunyuanImageTransformer2DModel

    return _seeded(HunyuanImageTransformer2DModel, in_channels=4, out_channels=4, num_attention_heads=2,
                   attention_head_dim=8, num_layers=1, num_single_layers=1, num_refiner_layers=1, patch_size=(1, 1),
                   text_embed_dim=TEXT_DIM, rope_axes_dim=(4, 4))()


def _hidream():
    from diffusers import HiDreamImageTransformer2DModel

    return _seeded(HiDreamImageTransformer2DModel, patch_size=2, in_channels=4, out_channels=4, num_layers=1,
                   num_single_layers=1, attention_head_dim=8, num_attention_heads=2, caption_channels=(8, 4),
                   text_emb_dim=8, num_routed_experts=2, num_activated_experts=2, axes_dims_rope=(4, 2, 2),
                   max_resolution=(8, 8), llama_layers=(0, 1), force_inference_output=True)()


def _omnigen():
    from diffusers import OmniGenTransformer2DModel

    return _seeded(OmniGenTransformer2DModel, hidden_size=16, num_attention_heads=4, num_key_value_heads=4,
                   intermediate_size=32, num_layers=2, pad_token_id=0, vocab_size=64, in_channels=4, time_step_dim=4,
                   rope_scaling={"long_factor": [1, 2], "short_factor": [1, 2]})()


def _flux_like(cls_name, **extra):
    def make():
        import diffusers

        return _seeded(getattr(diffusers, cls_name), patch_size=1, in_channels=16, num_layers=1, num_single_layers=1,
                       attention_head_dim=8, num_attention_heads=2, joint_attention_dim=TEXT_DIM,
                       axes_dims_rope=(2, 2, 4), **extra)()
    return make


def _flux_like_inputs(t):
    return dict(hidden_states=_randn(B, 16, 16), encoder_hidden_states=_randn(B, TEXT_TOKENS, TEXT_DIM),
                timestep=_t(t / 1000), img_ids=torch.zeros(16, 3), txt_ids=torch.zeros(TEXT_TOKENS, 3))


def _prx():
    from diffusers import PRXTransformer2DModel

    return _seeded(PRXTransformer2DModel, in_channels=4, patch_size=2, context_in_dim=TEXT_DIM, hidden_size=16,
                   num_heads=2, depth=2, axes_dim=(4, 4))()


def _transformer2d():
    from diffusers import Transformer2DModel

    return _seeded(Transformer2DModel, num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=4,
                   num_layers=2, sample_size=8, patch_size=2, num_embeds_ada_norm=10, norm_type="ada_norm_zero")()


def _nucleus():
    from diffusers import NucleusMoEImageTransformer2DModel

    return _seeded(NucleusMoEImageTransformer2DModel, patch_size=2, in_channels=16, out_channels=4, num_layers=2,
                   attention_head_dim=8, num_attention_heads=2, joint_attention_dim=TEXT_DIM, axes_dims_rope=(4, 2, 2),
                   moe_enabled=False, capacity_factors=[8.0, 8.0])()


def _glm():
    from diffusers import GlmImageTransformer2DModel

    return _seeded(GlmImageTransformer2DModel, patch_size=2, in_channels=4, out_channels=4, num_layers=2,
                   attention_head_dim=8, num_attention_heads=2, text_embed_dim=TEXT_DIM, time_embed_dim=16,
                   condition_dim=8, prior_vq_quantizer_codebook_size=64)()


def _ids(*axes):
    return torch.cartesian_prod(*[torch.arange(n) for n in axes]).float()  # (prod(axes), len(axes))


def _omnigen_inputs(t):
    n = TEXT_TOKENS + 1 + 16  # caption tokens, the time token, 4 x 4 image patches
    return dict(hidden_states=_randn(B, 4, 8, 8), timestep=_t(t / 1000),
                input_ids=torch.arange(B * TEXT_TOKENS).reshape(B, TEXT_TOKENS) % 10 + 1,
                input_img_latents=[], input_image_sizes={}, attention_mask=torch.ones(B, n, n),
                position_ids=torch.arange(n).repeat(B, 1))


def _cog_inputs(t):
    return dict(hidden_states=_randn(B, 4, 8, 8), encoder_hidden_states=_randn(B, TEXT_TOKENS, TEXT_DIM),
                timestep=_t(t), original_size=torch.tensor([[8.0, 8.0]] * B),
                target_size=torch.tensor([[8.0, 8.0]] * B),
                crop_coords=torch.zeros(B, 2))


FAMILIES: dict[str, FamilySpec] = {
    "DiTTransformer2DModel": FamilySpec(
        _dit, lambda t: dict(hidden_states=_randn(B, 3, 8, 8), timestep=_t(t), class_labels=torch.arange(B)),
        _ddim, text=False),
    "PixArtTransformer2DModel": FamilySpec(
        _pixart, lambda t: dict(hidden_states=_randn(B, 4, 8, 8), encoder_hidden_states=_randn(B, TEXT_TOKENS, 16),
                                timestep=_t(t), added_cond_kwargs={"resolution": None, "aspect_ratio": None}),
        _ddim),
    "SD3Transformer2DModel": FamilySpec(
        _sd3, lambda t: dict(hidden_states=_randn(B, 4, 8, 8), encoder_hidden_states=_randn(B, TEXT_TOKENS, TEXT_DIM),
                             pooled_projections=_randn(B, POOLED_DIM), timestep=_t(t)),
        _flow),
    "FluxTransformer2DModel": FamilySpec(
        _flux, lambda t: dict(hidden_states=_randn(B, 16, 16), encoder_hidden_states=_randn(B, TEXT_TOKENS, TEXT_DIM),
                              pooled_projections=_randn(B, POOLED_DIM), timestep=_t(t / 1000),
                              img_ids=torch.zeros(16, 3), txt_ids=torch.zeros(TEXT_TOKENS, 3)),
        _flow),
    "ChromaTransformer2DModel": FamilySpec(
        _chroma, lambda t: dict(hidden_states=_randn(B, 16, 16), encoder_hidden_states=_randn(B, TEXT_TOKENS, TEXT_DIM),
                                timestep=_t(t / 1000), img_ids=torch.zeros(16, 3), txt_ids=torch.zeros(TEXT_TOKENS, 3)),
        _flow),
    "QwenImageTransformer2DModel": FamilySpec(
        _qwen, lambda t: dict(hidden_states=_randn(B, 16, 16), encoder_hidden_states=_randn(B, TEXT_TOKENS, TEXT_DIM),
                              encoder_hidden_states_mask=torch.ones(B, TEXT_TOKENS, dtype=torch.long),
                              timestep=_t(t / 1000), img_shapes=[(1, 4, 4)] * B),
        _flow),
    "AuraFlowTransformer2DModel": FamilySpec(
        _auraflow, lambda t: dict(hidden_states=_randn(B, 4, 8, 8),
                                  encoder_hidden_states=_randn(B, TEXT_TOKENS, TEXT_DIM), timestep=_t(t / 1000)),
        _flow),
    "SanaTransformer2DModel": FamilySpec(
        _sana, lambda t: dict(hidden_states=_randn(B, 4, 8, 8), encoder_hidden_states=_randn(B, TEXT_TOKENS, TEXT_DIM),
                              timestep=_t(t)),
        _flow),
    "HunyuanDiT2DModel": FamilySpec(
        _hunyuan, lambda t: dict(hidden_states=_randn(B, 4, 8, 8), timestep=_t(t),
                                 encoder_hidden_states=_randn(B, TEXT_TOKENS, TEXT_DIM),
                                 text_embedding_mask=torch.ones(B, TEXT_TOKENS),
                                 encoder_hidden_states_t5=_randn(B, TEXT_TOKENS, TEXT_DIM),
                                 text_embedding_mask_t5=torch.ones(B, TEXT_TOKENS),
                                 image_meta_size=torch.tensor([[8, 8, 8, 8, 0, 0]] * B, dtype=torch.float32),
                                 style=torch.zeros(B, dtype=torch.long),
                                 image_rotary_emb=_hunyuan_rope()),
        _ddim),
    "CogView3PlusTransformer2DModel": FamilySpec(_cogview("CogView3PlusTransformer2DModel"), _cog_inputs, _ddim),
    "CogView4Transformer2DModel": FamilySpec(_cogview("CogView4Transformer2DModel"), _cog_inputs, _flow),
    "Lumina2Transformer2DModel": FamilySpec(
        _lumina2, lambda t: dict(hidden_states=_randn(B, 4, 8, 8), timestep=_t(1 - t / 1000),  # rising, as its pipeline
                                 encoder_hidden_states=_randn(B, TEXT_TOKENS, TEXT_DIM),
                                 encoder_attention_mask=torch.ones(B, TEXT_TOKENS, dtype=torch.bool)),
        _flow),
    "LuminaNextDiT2DModel": FamilySpec(
        _lumina_next, lambda t: dict(hidden_states=_randn(B, 4, 8, 8), timestep=_t(1 - t / 1000),
                                     encoder_hidden_states=_randn(B, TEXT_TOKENS, TEXT_DIM),
                                     encoder_mask=torch.ones(B, TEXT_TOKENS, dtype=torch.bool),
                                     image_rotary_emb=_lumina_rope(), cross_attention_kwargs={}),
        _flow),
    "Flux2Transformer2DModel": FamilySpec(
        _flux2, lambda t: dict(hidden_states=_randn(B, 16, 4), encoder_hidden_states=_randn(B, TEXT_TOKENS, TEXT_DIM),
                               timestep=_t(t / 1000), guidance=_t(1.0), img_ids=_ids(1, 4, 4, 1).expand(B, -1, -1),
                               txt_ids=_ids(1, 1, 1, TEXT_TOKENS).expand(B, -1, -1)),
        _flow),
    "Flux3Transformer2DModel": FamilySpec(
        _flux3, lambda t: dict(hidden_states=_randn(B, 16, 4), encoder_hidden_states=_randn(B, TEXT_TOKENS, TEXT_DIM),
                               timestep=_t(t / 1000), img_ids=_ids(1, 4, 4, 1), txt_ids=_ids(1, 1, 1, TEXT_TOKENS)),
        _flow),
    "BriaTransformer2DModel": FamilySpec(
        _bria, lambda t: dict(hidden_states=_randn(B, 16, 4), encoder_hidden_states=_randn(B, TEXT_TOKENS, TEXT_DIM),
                              timestep=_t(t), img_ids=torch.zeros(16, 3), txt_ids=torch.zeros(TEXT_TOKENS, 3)),
        _flow),
    "BriaFiboTransformer2DModel": FamilySpec(
        _bria_fibo, lambda t: dict(hidden_states=_randn(B, 16, 4),
                                   encoder_hidden_states=_randn(B, TEXT_TOKENS, TEXT_DIM),
                                   text_encoder_layers=[_randn(B, TEXT_TOKENS, TEXT_DIM)] * 2, timestep=_t(t),
                                   img_ids=torch.zeros(16, 3), txt_ids=torch.zeros(TEXT_TOKENS, 3)),
        _flow),
    "HunyuanImageTransformer2DModel": FamilySpec(
        _hunyuan_image, lambda t: dict(hidden_states=_randn(B, 4, 4, 4), timestep=_t(t),
                                       encoder_hidden_states=_randn(B, TEXT_TOKENS, TEXT_DIM),
                                       encoder_attention_mask=torch.ones(B, TEXT_TOKENS, dtype=torch.bool)),
        _flow),
    "HiDreamImageTransformer2DModel": FamilySpec(
        _hidream, lambda t: dict(hidden_states=_randn(B, 4, 8, 8), timesteps=_t(t),
                                 encoder_hidden_states_t5=_randn(B, TEXT_TOKENS, 8),
                                 encoder_hidden_states_llama3=_randn(2, B, TEXT_TOKENS, 4),
                                 pooled_embeds=_randn(B, 8)),
        _flow),
    "OmniGenTransformer2DModel": FamilySpec(_omnigen, _omnigen_inputs, _flow),
    "LongCatImageTransformer2DModel": FamilySpec(
        _flux_like("LongCatImageTransformer2DModel", pooled_projection_dim=POOLED_DIM), _flux_like_inputs, _flow),
    "OvisImageTransformer2DModel": FamilySpec(
        _flux_like("OvisImageTransformer2DModel", out_channels=16), _flux_like_inputs, _flow),
    "PRXTransformer2DModel": FamilySpec(
        _prx, lambda t: dict(hidden_states=_randn(B, 4, 8, 8), timestep=_t(t / 1000),
                             encoder_hidden_states=_randn(B, TEXT_TOKENS, TEXT_DIM)),
        _flow),
    "NucleusMoEImageTransformer2DModel": FamilySpec(
        _nucleus, lambda t: dict(hidden_states=_randn(B, 16, 16),
                                 encoder_hidden_states=_randn(B, TEXT_TOKENS, TEXT_DIM),
                                 encoder_hidden_states_mask=torch.ones(B, TEXT_TOKENS, dtype=torch.long),
                                 timestep=_t(t / 1000), img_shapes=[(1, 4, 4)] * B),
        _flow),
    "GlmImageTransformer2DModel": FamilySpec(
        _glm, lambda t: dict(hidden_states=_randn(B, 4, 8, 8), encoder_hidden_states=_randn(B, TEXT_TOKENS, TEXT_DIM),
                             prior_token_id=torch.arange(16).repeat(B, 1),  # one per 2 x 2 patch
                             prior_token_drop=torch.zeros(B, 16, dtype=torch.bool),
                             timestep=_t(t), target_size=torch.tensor([[8.0, 8.0]] * B),
                             crop_coords=torch.zeros(B, 2)),
        _flow),
    "Transformer2DModel": FamilySpec(
        _transformer2d, lambda t: dict(hidden_states=_randn(B, 4, 8, 8), timestep=_t(t), class_labels=torch.arange(B)),
        _ddim, text=False),
}
