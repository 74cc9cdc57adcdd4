"""Model factories: the embedded CIFAR-10 DiT, tiny random DiT / PixArt for tests, real models by hub id.

Sizes are small config factories collected in one dict, as in DiT's models.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import DiTTransformer2DModel, PixArtTransformer2DModel

from ..method.files import DEFAULT_MODEL, data_file

NUM_CLASSES = 10  # CIFAR-10; the null class for CFG is index 10


def cifar_dit(patch_size: int = 4, width: int = 192, depth: int = 8, heads: int = 4) -> DiTTransformer2DModel:
    """Class-conditional pixel-space DiT for 32x32x3 images, 10 classes + the null class."""
    if width % heads:
        raise ValueError(f"width={width} is not divisible by heads={heads}")
    return DiTTransformer2DModel(
        num_attention_heads=heads, attention_head_dim=width // heads, in_channels=3, out_channels=3,
        num_layers=depth, sample_size=32, patch_size=patch_size, num_embeds_ada_norm=NUM_CLASSES,
    )


def tiny_dit(depth: int = 3, sample_size: int = 8) -> DiTTransformer2DModel:
    """A tiny random DiT (3 channels, 10 classes) for tests and the walkthrough."""
    torch.manual_seed(0)
    return DiTTransformer2DModel(
        num_attention_heads=2, attention_head_dim=16, in_channels=3, out_channels=3, num_layers=depth,
        sample_size=sample_size, patch_size=2, num_embeds_ada_norm=NUM_CLASSES,
    ).eval()


def tiny_pixart(depth: int = 2, sample_size: int = 8) -> PixArtTransformer2DModel:
    """A tiny random PixArt-style transformer (self- and cross-attention) for tests."""
    torch.manual_seed(0)
    return PixArtTransformer2DModel(
        num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8, num_layers=depth,
        cross_attention_dim=16, caption_channels=16, sample_size=sample_size, patch_size=2,
        use_additional_conditions=False,
    ).eval()


# Real architectures, by hub id, with the configs used for random-weight speed runs where the hub is unreachable.
REAL_MODELS = {
    "facebook/DiT-XL-2-256": dict(cls=DiTTransformer2DModel, subfolder="transformer", config=dict(
        num_attention_heads=16, attention_head_dim=72, in_channels=4, out_channels=8, num_layers=28,
        sample_size=32, patch_size=2, num_embeds_ada_norm=1000)),
    "facebook/DiT-XL-2-512": dict(cls=DiTTransformer2DModel, subfolder="transformer", config=dict(
        num_attention_heads=16, attention_head_dim=72, in_channels=4, out_channels=8, num_layers=28,
        sample_size=64, patch_size=2, num_embeds_ada_norm=1000)),
    "PixArt-alpha/PixArt-Sigma-XL-2-1024-MS": dict(cls=PixArtTransformer2DModel, subfolder="transformer", config=dict(
        num_attention_heads=16, attention_head_dim=72, in_channels=4, out_channels=8, num_layers=28,
        cross_attention_dim=1152, caption_channels=4096, sample_size=128, patch_size=2,
        use_additional_conditions=False, interpolation_scale=2)),
}


def random_real(name: str, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """A real architecture with random weights (speed depends on the architecture, not the weights)."""
    if name not in REAL_MODELS:
        raise ValueError(f"unknown real model {name!r}; known: {sorted(REAL_MODELS)}")
    spec = REAL_MODELS[name]
    return spec["cls"](**spec["config"]).to(dtype).eval()


def looks_like_hub_id(name: str | Path) -> bool:
    """"org/name" that is no local path: a Hugging Face hub id."""
    text = str(name)
    return not Path(text).exists() and not text.startswith((".", "/", "~")) and text.count("/") == 1 \
        and all(part.strip() for part in text.split("/"))


def _model_class(config: Path) -> type:
    """The diffusers model class a config.json names (`_class_name`), else DiT or PixArt by its keys."""
    import diffusers

    try:
        data = json.loads(config.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{config} is not valid JSON: {e}") from None
    cls = getattr(diffusers, str(data.get("_class_name")), None)
    if isinstance(cls, type) and issubclass(cls, diffusers.ModelMixin):
        return cls
    return PixArtTransformer2DModel if "caption_channels" in data else DiTTransformer2DModel


def load_model(name_or_path: str | Path | None = None, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """Load a transformer: the shipped default (no argument; found by `files.data_file`), a local diffusers model
    folder (config.json) or pipeline folder (model_index.json: its `transformer`), or any hub id "org/name" (a
    pipeline repo's transformer, or a model repo). Offline, a hub id is a ConnectionError naming it."""
    if name_or_path is None:
        name_or_path = data_file(DEFAULT_MODEL)
    if looks_like_hub_id(name_or_path):
        return _load_from_hub(str(name_or_path), dtype)
    path = Path(name_or_path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"model path not found: {path} (neither a local folder nor a hub id 'org/name')")
    if (path / "model_index.json").is_file():  # a pipeline folder: its transformer
        path = path / "transformer"
    config = path / "config.json"
    if not config.is_file():
        raise FileNotFoundError(f"{path} is not a diffusers model folder: {config} is missing")
    cls = _model_class(config)
    try:
        model = cls.from_pretrained(path, torch_dtype=dtype, low_cpu_mem_usage=False).eval()
    except Exception as e:  # safetensors/json errors name no file; say which
        files = ", ".join(str(p) for p in sorted(path.glob("*.safetensors"))) or str(config)
        raise ValueError(f"could not load the model in {files}: {e}") from None
    meta = path / "dqar_model.json"
    model.dqar_meta = json.loads(meta.read_text()) if meta.is_file() else {}
    return model


def require_hub(name: str) -> None:
    """A ConnectionError naming `name` unless the Hugging Face hub answers (HF_HUB_OFFLINE counts as offline)."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    host = urlparse(constants.ENDPOINT).hostname
    try:
        if constants.HF_HUB_OFFLINE:
            raise OSError("HF_HUB_OFFLINE is set")
        socket.create_connection((host, 443), timeout=3).close()
    except OSError:
        raise ConnectionError(
            f"cannot reach the Hugging Face hub to load {name!r}: this machine is offline. Run on Colab (see the "
            "Reproduce part of the book), or pass a local diffusers folder."
        ) from None


def _load_from_hub(name: str, dtype: torch.dtype) -> torch.nn.Module:
    require_hub(name)
    if name in REAL_MODELS:
        spec = REAL_MODELS[name]
        return spec["cls"].from_pretrained(name, subfolder=spec["subfolder"], torch_dtype=dtype).eval()
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError

    try:
        try:
            config, subfolder = Path(hf_hub_download(name, "transformer/config.json")), "transformer"
        except EntryNotFoundError:
            config, subfolder = Path(hf_hub_download(name, "config.json")), None
    except RepositoryNotFoundError:
        raise ValueError(f"no model {name!r} on the Hugging Face hub (or it is gated: log in first)") from None
    except EntryNotFoundError:
        raise ValueError(f"{name!r} on the hub has neither transformer/config.json nor config.json: not a diffusers "
                         "transformer or pipeline") from None
    return _model_class(config).from_pretrained(name, subfolder=subfolder, torch_dtype=dtype).eval()
