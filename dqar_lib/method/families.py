"""Where DQAR attaches in a diffusers transformer of any family, found by structure rather than by class.

- The self-attention modules: every `Attention` that is not cross-attention, and every module of diffusers' newer
  attention classes (`AttentionModuleMixin`: Flux, Chroma, QwenImage, ...) that does not declare itself
  cross-attention. Joint attention (MMDiT: image and text tokens attend together) counts as self-attention; so
  does attention with fused QKV projections (PRX, Flux2's single blocks), where "kv" is refused and H_t is not
  measured without separate `to_q` / `to_k`.
- The block stack: the `ModuleList` elements (transformer blocks) that hold those attentions, in depth order;
  the "block" and "stack" granularities route one layer per block (its first self-attention measures H_t).
- The streams: a joint block takes `hidden_states` (image tokens, (B, N, D)) and `encoder_hidden_states` (text
  tokens, (B, M, D)) and returns both, as `(encoder_hidden_states, hidden_states)` (SD3, Flux) or the other way
  round (read off the block's own ``return`` statement, or that of the block a wrapper calls: HiDream).
  `Streams` joins them into one tensor, the image tokens
  then the text tokens, (B, N + M, D), so that a residual, a cache entry and a forecast cover both streams at
  once, and splits a served tensor back into the block's own output form.

What is reused for the text tokens, per granularity:

- "block" and "stack": the text stream's residual, with the image stream's (one entry); a reused joint block
  returns both streams advanced by the residuals they had when it last computed. Where a block returns no text
  output (SD3's last block, `context_pre_only`), the text stream is served unchanged, as the block would.
  "stack" is refused where the blocks lie in several stacks over different token sequences (Lumina2's refiners,
  Chroma's and AuraFlow's single-stream blocks over the concatenated sequence).
- "attn": the joint attention's text output, cached and served with its image output.
- "kv": only the image tokens' K/V (`to_k`, `to_v`); the text tokens' K/V (`add_k_proj`, `add_v_proj`) are
  recomputed every step. A single-stream block (Flux's) projects text and image tokens together, so there both
  are reused.
- H_t: from the Q/K that `to_q` / `to_k` project: in joint attention the image tokens only (the text tokens
  go through `add_q_proj` / `add_k_proj`); in a single-stream block that joins the streams itself (Flux's
  `torch.cat([encoder_hidden_states, hidden_states], dim=1)`, read by `joined_order`) the image tokens' rows of
  the joined Q/K; where the model joins them before the blocks (AuraFlow's, Chroma's single blocks), whose
  tokens are not told apart in the block, the joint sequence.
"""

from __future__ import annotations

import ast
import inspect
import re
import textwrap

import torch
from diffusers.models.attention import AttentionModuleMixin
from diffusers.models.attention_processor import Attention

IMAGE, TEXT = "hidden_states", "encoder_hidden_states"


def is_self_attention(m: torch.nn.Module) -> bool:
    """A diffusers attention module that attends over the image tokens (joint attention included)."""
    if isinstance(m, Attention):  # HiDream's subclass sets no is_cross_attention
        return not getattr(m, "is_cross_attention", False)
    if isinstance(m, AttentionModuleMixin):
        return not getattr(m, "is_cross_attention", False) and getattr(m, "cross_attention_dim_head", None) is None
    return False


def self_attention_modules(transformer: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """The self-attention modules in depth order (cross-attention is left alone)."""
    return [(n, m) for n, m in transformer.named_modules() if is_self_attention(m)]


def no_self_attention(transformer: torch.nn.Module) -> str:
    """Why `transformer` offers DQAR nothing to attach to, in one sentence naming its family."""
    family = type(transformer).__name__
    cross = [m for m in transformer.modules() if isinstance(m, (Attention, AttentionModuleMixin))]  # none is self
    if cross:
        return (f"{family} has no self-attention modules to attach DQAR to: its {len(cross)} attention modules are "
                "declared cross-attention (is_cross_attention), which DQAR leaves alone")
    return f"{family} has no diffusers self-attention modules (Attention or AttentionModuleMixin) to attach DQAR to"


def block_of(transformer: torch.nn.Module, name: str) -> torch.nn.Module | None:
    """The transformer block that holds the module `name`: the shallowest ancestor that is an element of a
    `ModuleList` (a block stack), else its parent module (None at the top level)."""
    if "." not in name:
        return None
    named = dict(transformer.named_modules())
    parts = name.split(".")
    for k in range(1, len(parts)):
        if isinstance(named.get(".".join(parts[:k - 1]) if k > 1 else ""), torch.nn.ModuleList):
            return named[".".join(parts[:k])]
    return named[name.rpartition(".")[0]]


def attachment_points(transformer: torch.nn.Module, per_block: bool
                      ) -> list[tuple[str, torch.nn.Module, torch.nn.Module | None]]:
    """(name, self-attention, block) per DQAR layer in depth order; `per_block`: one layer per block (its first
    self-attention), as the "block" and "stack" granularities route whole blocks."""
    points, seen = [], set()
    for name, m in self_attention_modules(transformer):
        block = block_of(transformer, name)
        if per_block and block is not None:
            if id(block) in seen:
                continue
            seen.add(id(block))
        points.append((name, m, block))
    return points


def _role(name: str) -> str:
    """"image", "text" or "" for a returned variable's name (hidden_states / img_attn_output, encoder_hidden_states /
    txt_attn_output, ...)."""
    if name.startswith(("encoder_hidden_states", "txt", "text", "context")) or name.endswith("_t"):
        return TEXT  # HiDream: hidden_states_i (image), hidden_states_t (text)
    if name.startswith(("hidden_states", "img", "image")):
        return IMAGE
    return ""


def _returned_roles(fn) -> tuple[str, ...] | None:
    """The stream each element of the tuple a function returns carries (`return encoder_hidden_states,
    hidden_states` -> (text, image)), read from its source; None if it returns no tuple with both streams."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(fn)))
    except (OSError, TypeError, SyntaxError):
        return None
    for node in ast.walk(tree):
        if isinstance(node, ast.Return) and isinstance(node.value, ast.Tuple):
            roles = tuple(_role(e.id) if isinstance(e, ast.Name) else "" for e in node.value.elts)
            if IMAGE in roles and TEXT in roles:
                return roles
    return None


def joined_order(block: torch.nn.Module) -> tuple[str, str] | None:
    """The order in which a single-stream block joins its streams into one sequence before attention, read from
    its source (`torch.cat([encoder_hidden_states, hidden_states], dim=1)` -> (text, image): Flux); None if it
    joins none."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(type(block).forward)))
    except (OSError, TypeError, SyntaxError):
        return None
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "cat" \
                and node.args and isinstance(node.args[0], (ast.List, ast.Tuple)):
            names = tuple(e.id if isinstance(e, ast.Name) else "" for e in node.args[0].elts)
            dim = [k.value for k in node.keywords if k.arg == "dim"] + node.args[1:2]
            if sorted(names) == sorted((IMAGE, TEXT)) and dim and isinstance(dim[0], ast.Constant) \
                    and dim[0].value in (1, -2):
                return names
    return None


def _delegate(module: torch.nn.Module) -> torch.nn.Module | None:
    """The submodule a wrapper block's forward returns the call of (`return self.block(...)`: HiDream), if any."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(type(module).forward)))
    except (OSError, TypeError, SyntaxError):
        return None
    for node in ast.walk(tree):
        if isinstance(node, ast.Return) and isinstance(node.value, ast.Call) \
                and isinstance(node.value.func, ast.Attribute) and isinstance(node.value.func.value, ast.Name) \
                and node.value.func.value.id == "self":
            sub = getattr(module, node.value.func.attr, None)
            return sub if isinstance(sub, torch.nn.Module) else None
    return None


class Streams:
    """The image and text streams of a module's inputs and outputs (a block or an attention), as one tensor.

    A module that returns a tensor has one stream: `join` and `split` pass it through. One that returns a tuple
    carries `hidden_states` and `encoder_hidden_states`, in the order of its own ``return`` statement.
    """

    def __init__(self, module: torch.nn.Module, fn=None):
        self.order = _returned_roles(fn or type(module).forward)  # e.g. ("encoder_hidden_states", "hidden_states")
        inner = _delegate(module) if self.order is None and fn is None else None
        if inner is not None:  # a wrapper block: the streams of the block it calls
            self.order = Streams(inner).order
        self.tuple_out = self.order is not None  # whether its last output was a tuple (joint attention returns a
        self.text_out = True  # tensor when called without text); whether that tuple carried the text stream
        self.N = None  # image tokens of the last join

    @property
    def joint(self) -> bool:
        return self.order is not None

    def join(self, image: torch.Tensor, text: torch.Tensor | None) -> torch.Tensor:
        """(B, N, D) image and (B, M, D) text tokens -> (B, N + M, D); the image alone for a one-stream module."""
        self.N = image.shape[1]
        if not self.joint or text is None:
            return image
        if text.shape[-1] != image.shape[-1]:
            raise ValueError(f"{type(self).__name__}: text width {text.shape[-1]} != image width {image.shape[-1]}")
        return torch.cat([image, text], dim=1)

    def join_output(self, out, text_in: torch.Tensor | None) -> torch.Tensor:
        """The module's output as one tensor, like `join` (a missing text output counts as the text input)."""
        self.tuple_out = self.joint and isinstance(out, tuple)
        if not self.tuple_out:
            return out
        parts = dict(zip(self.order, out))
        text = parts.get(TEXT)
        self.text_out = text is not None
        return self.join(parts[IMAGE], text if text is not None else text_in)

    def split(self, x: torch.Tensor):
        """A joined tensor back in the module's own output form."""
        if not self.tuple_out:
            return x
        image, text = x[:, :self.N], (x[:, self.N:] if self.text_out else None)
        return tuple(image if n == IMAGE else text if n == TEXT else None for n in self.order)


def attention_streams(m: torch.nn.Module) -> Streams:
    """The streams of an attention module's output, read off its processor (joint processors return a tuple)."""
    processor = getattr(m, "processor", None)
    return Streams(m, type(processor).__call__ if processor is not None else None)


_UNCOND_FIRST = re.compile(r"torch\.cat\(\s*\[\s*negative_prompt_embeds\s*,\s*prompt_embeds")
_COND_FIRST = re.compile(r"torch\.cat\(\s*\[\s*(prompt_embeds\s*,\s*negative_prompt_embeds"
                         r"|class_labels\s*,\s*class_null)")


def cfg_layout(pipe) -> str | None:
    """Where `pipe` puts the conditional half of a CFG batch, read off its ``__call__``: "cond_second" where it
    concatenates [negative, positive] (PixArt, SD3, Sana, HunyuanDiT, AuraFlow), "cond_first" where [positive,
    negative] (DiT's class labels, Lumina); None where it batches no CFG (Flux runs its passes apart)."""
    try:
        src = inspect.getsource(type(pipe).__call__)
    except (OSError, TypeError):
        return None
    if _UNCOND_FIRST.search(src):
        return "cond_second"
    return "cond_first" if _COND_FIRST.search(src) else None


_SCALED_T = re.compile(r"\btimestep\b[^\n]*\*\s*1000\b")  # timestep = timestep * 1000, time_proj(timestep * 1000)


def timestep_scale(transformer: torch.nn.Module) -> float:
    """1000 for a family that takes t / 1000 (its pipelines pass sigma) and scales it back: in its forward (Flux,
    Chroma), in its `Timesteps` embedding (`scale=1000`: QwenImage, AuraFlow) or by its config's `time_factor`
    (PRX); else 1. DQAR reads progress off t on the scheduler's 0..1000 scale."""
    from diffusers.models.embeddings import Timesteps

    if getattr(getattr(transformer, "config", None), "time_factor", 1) == 1000:
        return 1000.0
    if any(isinstance(m, Timesteps) and getattr(m, "scale", 1) == 1000 for m in transformer.modules()):
        return 1000.0
    try:
        src = inspect.getsource(type(transformer).forward)
    except (OSError, TypeError):
        return 1.0
    return 1000.0 if _SCALED_T.search(src) else 1.0


def family_refusal(transformer: torch.nn.Module, granularity: str,
                   points: list[tuple[str, torch.nn.Module, torch.nn.Module | None]]) -> str | None:
    """Why `granularity` cannot apply to this family, in one sentence naming it (None if it can)."""
    family = type(transformer).__name__
    if granularity == "kv":
        fused = [n for n, m, _ in points if not (hasattr(m, "to_k") and hasattr(m, "to_v"))]
        if fused:
            return (f"granularity='kv' reuses the separate K/V projections (to_k, to_v), and {family}'s "
                    f"{fused[0]} has none (fused QKV)")
    if granularity in ("block", "stack"):
        loose = [n for n, _, b in points if b is None]
        if loose:
            return f"granularity={granularity!r} needs each self-attention inside a transformer block; {family}'s " \
                   f"{loose[0]} has no parent module"
        lists = _stack_names(transformer, points)
        if granularity == "stack" and len(lists) > 1 and not all(
                TEXT in inspect.signature(b.forward).parameters for _, _, b in points):
            return (f"granularity='stack' serves the whole block stack from its first block's input, and {family}'s "
                    f"blocks lie in {len(lists)} stacks ({', '.join(lists)}) over different token sequences; "
                    "granularity='block' forecasts each block on the same plan, e.g. "
                    "DQARConfig.preset('dqar', granularity='block')")
    return None


def _stack_names(transformer: torch.nn.Module, points) -> list[str]:
    """The names of the ModuleLists that hold the blocks of `points`, in depth order."""
    named = {id(m): n for n, m in transformer.named_modules()}
    out = []
    for _, _, b in points:
        parent = named.get(id(b), "").rpartition(".")[0]
        if parent not in out:
            out.append(parent)
    return out
