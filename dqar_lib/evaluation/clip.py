"""CLIP score (text-image agreement) where transformers and the CLIP weights are at hand, else the reason why not.

    scorer, why_not = clip_scorer()          # (callable, None) or (None, "a sentence")
    score = scorer(images, prompts)          # mean 100 * max(cos(image, text), 0), as torchmetrics' CLIPScore
"""

from __future__ import annotations

from collections.abc import Callable

import torch

CLIP_MODEL = "openai/clip-vit-base-patch16"


def clip_scorer(model_name: str = CLIP_MODEL, device: str | torch.device = "cpu"
                ) -> tuple[Callable | None, str | None]:
    """A scorer `f(images (N, 3, H, W) in [0, 1], texts) -> float`, loaded from the local cache first, then from the
    hub if it answers; (None, reason) when transformers or the weights cannot be had (the benchmark records it)."""
    try:
        from transformers import CLIPModel, CLIPProcessor
    except ImportError as e:
        return None, f"transformers is not installed ({e})"
    try:
        model = CLIPModel.from_pretrained(model_name, local_files_only=True)
        processor = CLIPProcessor.from_pretrained(model_name, local_files_only=True)
    except Exception:  # not cached: try the hub, if it answers
        from ..models.zoo import require_hub

        try:
            require_hub(model_name)
            model = CLIPModel.from_pretrained(model_name)
            processor = CLIPProcessor.from_pretrained(model_name)
        except Exception as e:  # offline, gated, or no such model: the reason is the result
            return None, f"the CLIP weights {model_name!r} could not be loaded: {str(e).splitlines()[0]}"
    model = model.eval().to(device)

    @torch.no_grad()
    def score(images: torch.Tensor, texts: list[str]) -> float:
        pixels = [img.mul(255).round().byte().permute(1, 2, 0).numpy() for img in images]  # (H, W, 3) uint8
        inputs = processor(text=list(texts), images=pixels, return_tensors="pt", padding=True, truncation=True)
        out = model(**{k: v.to(device) for k, v in inputs.items()})
        img, txt = out.image_embeds, out.text_embeds  # (N, D) each
        cos = torch.nn.functional.cosine_similarity(img, txt, dim=-1)
        return float((100 * cos.clamp_min(0)).mean())

    return score, None
