"""diffusers pipelines as the benchmark sees them: load one (hub id or folder), condition it, decode its latents::

    pipe = load_pipeline("facebook/DiT-XL-2-256", dtype=torch.float16, device="cuda")   # or a local folder
    cond = class_conditions(pipe, n=8)                  # DiT: the first 8 of id2label
    cond = text_conditions(pipe, ["a red fox", ...])    # PixArt: T5 embeddings, masks, token counts
    res = sample(pipe.transformer, **cond.sample_kwargs(), vae=pipe.vae)

`tiny_dit_pipeline()` / `tiny_pixart_pipeline()` build random pipelines small enough for a CPU test (a tiny VAE,
and for PixArt a one-layer T5 with a word-level tokenizer built in code), so nothing is downloaded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from .sampling import is_text_conditioned
from .zoo import looks_like_hub_id, require_hub

TINY_WORDS = ("a an the of on in with and at by under over red blue green yellow black white small large old young "
              "cat dog fox bird horse car tree house river mountain city street sky sun moon boat flower forest "
              "photo painting portrait night morning light dark sitting running standing near").split()
TINY_CAPTION_TOKENS = 48  # the tiny T5's max_sequence_length


@dataclass
class Conditions:
    """What one batch is conditioned on: class ids (DiT) or caption embeddings (PixArt), and what names them."""

    names: list[str]  # a label or prompt per image (reports, file names)
    class_labels: list[int] | None = None
    prompt_embeds: torch.Tensor | None = None  # (N, T, C_cap)
    prompt_mask: torch.Tensor | None = None  # (N, T), 1 on real tokens
    negative_embeds: torch.Tensor | None = None  # (1, T, C_cap): the empty prompt
    negative_mask: torch.Tensor | None = None  # (1, T)
    prompt_tokens: list[int] = field(default_factory=list)  # p of tau(p), per prompt

    def __len__(self) -> int:
        return len(self.names)

    def sample_kwargs(self) -> dict:
        """The conditioning arguments of `dqar_lib.sample` (and `run_method`)."""
        if self.class_labels is not None:
            return dict(class_labels=self.class_labels)
        return dict(prompt_embeds=self.prompt_embeds, prompt_mask=self.prompt_mask,
                    negative_embeds=self.negative_embeds, negative_mask=self.negative_mask)

    def subset(self, idx: list[int]) -> Conditions:
        """The conditions of images `idx` (the negative prompt is shared)."""
        if self.class_labels is not None:
            return Conditions([self.names[i] for i in idx], [self.class_labels[i] for i in idx])
        return Conditions([self.names[i] for i in idx], None, self.prompt_embeds[idx], self.prompt_mask[idx],
                          self.negative_embeds, self.negative_mask, [self.prompt_tokens[i] for i in idx])


def load_pipeline(name_or_path: str | Path, dtype: torch.dtype = torch.float32, device: str = "cpu"):
    """A diffusers pipeline from a local folder (model_index.json) or a hub id; errors name what failed."""
    from diffusers import DiffusionPipeline

    path = Path(name_or_path).expanduser()
    if looks_like_hub_id(name_or_path):
        require_hub(str(name_or_path))
        source = str(name_or_path)
    elif not path.exists():
        raise FileNotFoundError(f"--model {name_or_path!r} is neither a local folder nor a hub id 'org/name'")
    elif not (path / "model_index.json").is_file():
        raise FileNotFoundError(f"{path} is not a diffusers pipeline folder: {path / 'model_index.json'} is missing")
    else:
        source = str(path)
    import importlib.util

    low_mem = importlib.util.find_spec("accelerate") is not None  # without accelerate, diffusers warns and falls back
    try:
        pipe = DiffusionPipeline.from_pretrained(source, dtype=dtype, low_cpu_mem_usage=low_mem,
                                                 **_saved_without(path), **_int_id2label(source))
    except Exception as e:  # hub and file errors are long; name the model first
        raise ValueError(f"could not load the pipeline {name_or_path!r}: {type(e).__name__}: {e}") from None
    if getattr(pipe, "transformer", None) is None:
        raise ValueError(f"{name_or_path!r} is a {type(pipe).__name__} with no transformer: DQAR attaches to the "
                         "transformer of a DiT- or PixArt-style pipeline")
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def _int_id2label(source: str) -> dict:
    """{"id2label": {int: name}} when the pipeline's model_index.json carries an id2label (DiT pipelines): JSON keys
    are strings, DiTPipeline annotates `dict[int, str]`, and diffusers warns "Expected types for id2label" on every
    load unless the mapping is passed with the keys it declares. {} when there is none (or the index is unreadable:
    from_pretrained then names the failure)."""
    from diffusers import DiffusionPipeline

    try:
        spec = DiffusionPipeline.load_config(source)
    except Exception:
        return {}
    labels = spec.get("id2label")
    if not isinstance(labels, dict) or not all(str(k).lstrip("-").isdigit() for k in labels):
        return {}
    return {"id2label": {int(k): v for k, v in labels.items()}}


def _saved_without(folder: Path) -> dict:
    """{component: None} for each component a local pipeline folder was saved without (null in model_index.json,
    e.g. text encoders dropped for pre-encoded prompts), which diffusers otherwise refuses to load."""
    import json

    index = folder / "model_index.json"
    if not index.is_file():
        return {}
    spec = json.loads(index.read_text())
    return {k: None for k, v in spec.items() if not k.startswith("_") and v == [None, None]}


def pipeline_driven(pipe) -> bool:
    """True when dqar_lib's own sampling loop cannot condition `pipe.transformer` (neither DiT-style class labels
    nor PixArt-style caption embeddings: SD3, Flux, ...), so the benchmark drives `pipe(...)` itself."""
    model = pipe.transformer
    return not is_text_conditioned(model) and getattr(model.config, "num_embeds_ada_norm", None) is None


def class_conditions(pipe, n: int | None = None, class_ids: list[int] | None = None) -> Conditions:
    """DiT: `class_ids`, or the first `n` ids of the pipeline's id2label (0..n-1 when it has none)."""
    num_classes = pipe.transformer.config.num_embeds_ada_norm
    labels = getattr(pipe, "labels", None) or {}  # DiTPipeline: label name -> id
    names = {}
    for name, i in labels.items():
        names.setdefault(int(i), name)
    if class_ids is None:
        if not n or n < 1:
            raise ValueError(f"the number of images must be >= 1, got {n!r}")
        class_ids = (sorted(names) or list(range(num_classes)))[:n]
        class_ids = [class_ids[i % len(class_ids)] for i in range(n)]
    bad = [c for c in class_ids if not 0 <= int(c) < num_classes]
    if bad:
        raise ValueError(f"class ids {bad} are out of range for this model's {num_classes} classes: give ids from 0 "
                         f"to {num_classes - 1}")
    return Conditions([names.get(int(c), f"class {int(c)}") for c in class_ids], [int(c) for c in class_ids])


@torch.no_grad()
def text_conditions(pipe, prompts: list[str], max_sequence_length: int | None = None) -> Conditions:
    """PixArt: each prompt's T5 embedding and mask, the empty prompt's as the negative, p = its token count."""
    if not prompts:
        raise ValueError("text_conditions needs at least one prompt, got none")
    tok_max = getattr(pipe.tokenizer, "model_max_length", None)
    T = max_sequence_length or (tok_max if tok_max and tok_max < 10_000 else 300)
    device = next(pipe.text_encoder.parameters()).device
    emb, mask, neg, neg_mask = pipe.encode_prompt(list(prompts), do_classifier_free_guidance=True, negative_prompt="",
                                                  device=device, max_sequence_length=T, clean_caption=False)
    mask = mask.reshape(len(prompts), -1)  # (N, T)
    return Conditions(list(prompts), None, emb, mask, neg[:1], neg_mask.reshape(len(prompts), -1)[:1],
                      [int(m.sum()) for m in mask])


def conditions_for(pipe, n: int, class_ids: list[int] | None = None, prompts: list[str] | None = None) -> Conditions:
    """Class ids for a class-conditional pipeline, prompts (the first n) for a text-conditioned one."""
    if is_text_conditioned(pipe.transformer):
        if class_ids:
            raise ValueError(f"{type(pipe).__name__} is text-conditioned: pass prompts, not class ids")
        if not prompts:
            raise ValueError(f"{type(pipe).__name__} is text-conditioned and no prompts were given")
        return text_conditions(pipe, [prompts[i % len(prompts)] for i in range(n)])
    if pipeline_driven(pipe):
        raise ValueError(f"{type(pipe).__name__}'s {type(pipe.transformer).__name__} is neither class-conditional "
                         "(DiT-style) nor text-conditioned with caption embeddings (PixArt-style), the two that "
                         "dqar_lib's own sampling loop conditions; run it through its own pipe(...): "
                         "`with dqar_lib.dqar(pipe): pipe(...)`, or evaluation.run_pipeline (the benchmark CLI "
                         "does so)")
    if prompts:
        raise ValueError(f"{type(pipe).__name__} is class-conditional: pass class ids, not prompts")
    return class_conditions(pipe, n, class_ids)


@torch.no_grad()
def decode(pipe, latents: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) images in [0, 1] from (N, C, h, w) latents through the pipeline's VAE (pixel models: as is)."""
    vae = getattr(pipe, "vae", None)
    if vae is None:
        return (latents.float().clamp(-1, 1) + 1) / 2
    p = next(vae.parameters())
    x = vae.decode(latents.to(p.device, p.dtype) / vae.config.scaling_factor).sample  # (N, 3, H, W)
    return ((x.float().clamp(-1, 1) + 1) / 2).cpu()


def tiny_vae(shift_factor: float | None = None):
    """A one-block AutoencoderKL (4 latent channels); SD3 / Flux pipelines decode with a `shift_factor`."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(block_out_channels=(8,), down_block_types=("DownEncoderBlock2D",),
                         up_block_types=("UpDecoderBlock2D",), latent_channels=4, norm_num_groups=4, sample_size=8,
                         shift_factor=shift_factor)


def tiny_dit_pipeline(depth: int = 2, sample_size: int = 8):
    """A random DiTPipeline: a tiny latent DiT (4 channels, learned sigma, ImageNet's 1000 class slots, ten of them
    named in id2label) and a one-block VAE; it runs through `pipe(...)` as a hub DiT pipeline does."""
    from diffusers import DDIMScheduler, DiTPipeline, DiTTransformer2DModel

    torch.manual_seed(0)
    transformer = DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8,
                                        num_layers=depth, sample_size=sample_size, patch_size=2,
                                        num_embeds_ada_norm=1000).eval()  # DiTPipeline's null class is 1000
    id2label = {i: name for i, name in enumerate("airplane automobile bird cat deer dog frog horse ship truck".split())}
    pipe = DiTPipeline(transformer, tiny_vae().eval(), DDIMScheduler(), id2label=id2label)
    pipe.register_to_config(id2label=id2label)  # saved in model_index.json, as the hub's DiT pipelines carry it
    return pipe


def tiny_t5_tokenizer():
    """A T5 tokenizer over TINY_WORDS, other words spelled letter by letter (a Unigram model built in code, with
    T5's Metaspace pre-tokenizer so that it reloads as it was saved: no download)."""
    import string

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import T5TokenizerFast

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    vocab += [(f"\u2581{w}", -1.0) for w in TINY_WORDS]
    vocab += [(c, -5.0) for c in string.ascii_lowercase + string.ascii_uppercase + string.digits + ".,'-"]
    tok = Tokenizer(models.Unigram(vocab, unk_id=2))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace()])
    tok.decoder = decoders.Metaspace()
    return T5TokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                           extra_ids=0, model_max_length=TINY_CAPTION_TOKENS)


def tiny_pixart_pipeline(depth: int = 2, sample_size: int = 8):
    """A random PixArtSigmaPipeline: a one-layer T5 (width 16), the tokenizer above, a tiny PixArt and VAE."""
    from diffusers import DPMSolverMultistepScheduler, PixArtSigmaPipeline, PixArtTransformer2DModel
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(0)
    tokenizer = tiny_t5_tokenizer()
    encoder = T5EncoderModel(T5Config(vocab_size=len(tokenizer), d_model=16, d_ff=32, d_kv=8, num_heads=2,
                                      num_layers=1)).eval()
    transformer = PixArtTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8,
                                           num_layers=depth, cross_attention_dim=16, caption_channels=16,
                                           sample_size=sample_size, patch_size=2,
                                           use_additional_conditions=False).eval()
    return PixArtSigmaPipeline(tokenizer=tokenizer, text_encoder=encoder, vae=tiny_vae().eval(),
                               transformer=transformer, scheduler=DPMSolverMultistepScheduler())
