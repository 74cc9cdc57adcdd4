"""Attach DQAR to any diffusers transformer built from attention modules, and remove it exactly.

Where it attaches in each family (self-attention, block stack, the image and text streams) is found by
structure in `families`.

The hooks only route: each self-attention module asks the controller whether to serve its cache or
compute (and, on compute, hands back what it produced). No decision is made here.
"""

from __future__ import annotations

import contextlib
import inspect

import torch

from .cache import signature
from .config import DQARConfig
from .controller import DQARController
from .families import (
    Streams,
    attachment_points,
    attention_streams,
    cfg_layout,
    family_refusal,
    joined_order,
    no_self_attention,
    timestep_scale,
)
from .families import self_attention_modules as self_attention_modules
from .prediction import scheduler_timestep
from .stats import sampled_attention_entropy

_ATTR = "_dqar_controller"


class _Layer:
    """Routing state of one attention module while DQAR is attached."""

    def __init__(self, index: int, module: torch.nn.Module):
        self.index, self.module = index, module
        self.capture = False
        self.q = self.k = None
        self.kv: tuple[torch.Tensor, torch.Tensor] | None = None
        self.sig_in = self.sig_out = None  # "attn", "kv": the inputs of the last compute, the signature it stored
        self.image_rows: tuple[slice, int] | None = None  # a joining single-stream block: image rows, all tokens
        self.handles: list = []
        self.patched: list[torch.nn.Module] = []


def _patch_forward(mod: torch.nn.Module, fn, layer: _Layer) -> None:
    mod.forward = fn  # an instance attribute shadows the class method; removal deletes it
    layer.patched.append(mod)


def _cond_half(x, B: int, first: bool):
    """The conditional half of every batch-sized tensor (CFG layout); other values pass through."""
    if torch.is_tensor(x) and x.ndim > 0 and x.shape[0] == B:
        return x[:B // 2] if first else x[B // 2:]
    return x


def _attach_block(ctl: DQARController, layer: _Layer, block: torch.nn.Module, compile_fn) -> None:
    """"block" granularity: serve hidden_states + the residual the block added when it last computed."""
    i, cfg = layer.index, ctl.config
    params = inspect.signature(block.forward)
    orig = compile_fn(block.forward)
    io = Streams(block)  # joint blocks: image and text tokens as one (B, N + M, D) tensor (families)

    def forward(*args, **kwargs):
        bound = params.bind(*args, **kwargs)
        text = bound.arguments.get("encoder_hidden_states")
        hs = io.join(bound.arguments["hidden_states"], text)  # (B, N, D), (B, N + M, D) for a joint block
        if ctl.try_reuse(i, ("res",), signature(hs), hs):
            return io.split(hs + ctl.cached(i, "res"))
        ctl.computed_input(i, hs)
        layer.capture = ctl.wants_entropy()
        try:
            B = hs.shape[0]
            if ctl.cfg_share_now and B % 2 == 0:  # run the conditional half; the other half takes its residual
                first = cfg.cfg_layout == "cond_first"
                half = {k: _cond_half(v, B, first) for k, v in bound.arguments.items()}
                res = io.join_output(orig(**half), _cond_half(text, B, first)) - _cond_half(hs, B, first)  # (B/2, N, D)
                out = hs + torch.cat([res, res])
                ctl.cfg_shared += 1
            else:
                out = io.join_output(orig(*args, **kwargs), text)
        finally:
            layer.capture = False
        ctl.store(i, "res", lambda: out - hs)  # subtract only if a later step can use it
        _entropy(ctl, layer)
        return io.split(out)

    _patch_forward(block, forward, layer)


def _attach_stack(ctl: DQARController, layer: _Layer, block: torch.nn.Module, compile_fn) -> None:
    """"stack" granularity: block 0 decides for the stack; a reuse serves its input + the residual the whole stack
    added when it last computed (stored by the last block), and every later block passes its input through."""
    i, last = layer.index, layer.index == ctl.num_layers - 1
    params = inspect.signature(block.forward)
    orig = compile_fn(block.forward)
    io = Streams(block)  # joint blocks: image and text tokens as one (B, N + M, D) tensor (families)

    def forward(*args, **kwargs):
        arguments = params.bind(*args, **kwargs).arguments
        text = arguments.get("encoder_hidden_states")
        if i == 0:
            hs = io.join(arguments["hidden_states"], text)  # (B, N, D), (B, N + M, D) for a joint block
            if ctl.try_reuse(0, ("stack",), signature(hs), hs):
                return io.split(hs + ctl.cached(0, "stack"))
            ctl.computed_input(0, hs)
            ctl.stack_input = hs
        elif ctl.follow(i):
            return io.split(io.join(arguments["hidden_states"], text))
        layer.capture = ctl.wants_entropy()
        try:
            out = orig(*args, **kwargs)
        finally:
            layer.capture = False
        if last:
            h0, ctl.stack_input = ctl.stack_input, None
            flat = io.join_output(out, text)
            ctl.store(0, "stack", lambda: flat - h0)
        _entropy(ctl, layer)
        return out

    _patch_forward(block, forward, layer)


def _entropy(ctl: DQARController, layer: _Layer) -> None:
    """Hand the controller H_t from the Q and K this layer just projected, if it captured them."""
    if layer.q is not None and layer.k is not None:
        m, cfg, q, k = layer.module, ctl.config, layer.q, layer.k  # (B, T, heads * d) each
        if layer.image_rows is not None and q.ndim == k.ndim == 3 and q.shape[1] == k.shape[1] == layer.image_rows[1]:
            q, k = q[:, layer.image_rows[0]], k[:, layer.image_rows[0]]  # (B, N, heads * d): the image tokens
        ctl.set_entropy(layer.index, sampled_attention_entropy(q, k, m.heads, cfg.entropy_rows, cfg.entropy_heads,
                                                               getattr(m, "scale", None)))
    layer.q = layer.k = None


def _arguments(params: inspect.Signature, args: tuple, kwargs: dict) -> dict:
    """A call's arguments by name, a `**kwargs` parameter's entries flattened in (so they can be passed again)."""
    bound = params.bind(*args, **kwargs).arguments
    out = {}
    for name, v in bound.items():
        kind = params.parameters[name].kind
        if kind is inspect.Parameter.VAR_KEYWORD:
            out.update(v)
        elif kind is inspect.Parameter.VAR_POSITIONAL:
            raise TypeError(f"DQAR cannot route an attention forward that takes *{name}")
        else:
            out[name] = v
    return out


def _image_rows(layer: _Layer, block: torch.nn.Module, order: tuple[str, str]):
    """A pre-hook that records, for the block's joined sequence, the image tokens' rows and the token count."""
    params = inspect.signature(block.forward)

    def pre(_mod, args, kwargs):
        bound = params.bind_partial(*args, **kwargs).arguments
        image, text = bound.get("hidden_states"), bound.get("encoder_hidden_states")
        if not (torch.is_tensor(image) and torch.is_tensor(text)):
            layer.image_rows = None
            return
        N, M = image.shape[1], text.shape[1]
        layer.image_rows = (slice(M, M + N) if order[0] == "encoder_hidden_states" else slice(0, N), N + M)

    return pre


def _attach_layer(ctl: DQARController, layer: _Layer, block: torch.nn.Module | None, compile_fn) -> None:
    m, i, cfg = layer.module, layer.index, ctl.config
    orig = compile_fn(m.forward)  # the class's bound forward: the compute path (compiled on its own if asked)
    kv = cfg.granularity == "kv"

    def capture_q(_mod, _inp, out):
        if layer.capture:
            layer.q = out

    def capture_k(_mod, _inp, out):
        if layer.capture:
            layer.k = out

    if hasattr(m, "to_q") and hasattr(m, "to_k"):  # H_t from the Q/K these project (families: which tokens)
        layer.handles += [m.to_q.register_forward_hook(capture_q), m.to_k.register_forward_hook(capture_k)]
        order = joined_order(block) if block is not None else None
        if order is not None:  # a block that joins text and image tokens itself: H_t on the image tokens' rows
            layer.handles.append(block.register_forward_pre_hook(_image_rows(layer, block, order), with_kwargs=True))
    if cfg.granularity in ("block", "stack"):
        if block is None:
            raise ValueError(f"granularity={cfg.granularity!r} needs each self-attention inside a transformer block; "
                             f"layer {i} has no parent module")
        (_attach_block if cfg.granularity == "block" else _attach_stack)(ctl, layer, block, compile_fn)
        return

    io = attention_streams(m)  # joint attention returns (image, text) outputs: one (B, N + M, D) tensor

    params = inspect.signature(m.forward)  # Attention's (hidden_states, encoder_hidden_states, attention_mask, ...)
    # or a newer class's own: Flux2's parallel self-attention takes no text, HiDream's names them norm_...
    image_arg = next(iter(params.parameters))
    text_arg = next((n for n in params.parameters if "encoder_hidden_states" in n), None)

    def forward(*args, **kwargs):
        arguments = _arguments(params, args, kwargs)
        hidden_states = arguments[image_arg]  # (B, N, D)
        encoder_hidden_states, attention_mask = arguments.get(text_arg), arguments.get("attention_mask")
        # an entry is served only for the inputs it was computed from: the output's signature (its shape may differ:
        # joint attention's (B, N + M, D), Lumina's unflattened heads) stands for them while the inputs match
        sig_in = (signature(hidden_states), signature(encoder_hidden_states) if torch.is_tensor(encoder_hidden_states)
                  else None)
        sig = layer.sig_out if sig_in == layer.sig_in else sig_in
        if ctl.try_reuse(i, ("k", "v") if kv else ("out",), sig, hidden_states):
            if not kv:
                return io.split(ctl.cached(i, "out"))
            layer.kv = (ctl.cached(i, "k"), ctl.cached(i, "v"))
        else:
            ctl.computed_input(i, hidden_states)
            layer.sig_in = sig_in
        layer.capture = layer.kv is None and ctl.wants_entropy()
        try:
            share = not kv and ctl.cfg_share_now and attention_mask is None and hidden_states.shape[0] % 2 == 0
            if share:
                B, first = hidden_states.shape[0], cfg.cfg_layout == "cond_first"
                o = io.join_output(orig(**{k: _cond_half(v, B, first) for k, v in arguments.items()}), None)
                out = torch.cat([o, o])  # (B, N, D); (B, N + M, D) for joint attention
                ctl.cfg_shared += 1
            else:
                out = io.join_output(orig(*args, **kwargs), None)
        finally:
            layer.kv, layer.capture = None, False
        if not kv:
            layer.sig_out = signature(out)
            ctl.store(i, "out", out)
        _entropy(ctl, layer)
        return io.split(out)

    _patch_forward(m, forward, layer)
    if kv:
        for j, (proj, kind) in enumerate(((m.to_k, "k"), (m.to_v, "v"))):
            proj_orig = compile_fn(proj.forward)

            def proj_forward(x, _orig=proj_orig, _kind=kind, _j=j):
                if layer.kv is not None:
                    return layer.kv[_j]
                y = _orig(x)
                layer.sig_out = signature(y)  # K and V alike
                ctl.store(i, _kind, y)
                return y

            _patch_forward(proj, proj_forward, layer)


def _prompt_tokens(bound: dict) -> int | None:
    """Prompt length p for tau(p): the largest count of unmasked text tokens, or None for class labels."""
    mask = bound.get("encoder_attention_mask")
    if mask is not None:
        return int(mask.reshape(mask.shape[0], -1).sum(-1).max())
    text = bound.get("encoder_hidden_states")
    return int(text.shape[1]) if text is not None else None


def apply_dqar(transformer: torch.nn.Module, config: DQARConfig | str | None = None, scheduler=None,
               prompt_length: int | None = None, compile: bool = False,
               compile_options: dict | None = None) -> DQARController:
    """Attach DQAR to every self-attention module of `transformer` and return its controller.

    `config` is a DQARConfig, a preset name, or None for the `"dqar"` preset. Give the pipeline's
    `scheduler` so that SNR_t uses its noise schedule and device timesteps are never read back.
    `prompt_length` fixes p in tau(p); otherwise it is read from the text inputs at each run's first step.
    `compile=True` compiles each compute path on its own (regional `torch.compile`, `compile_options` passed
    through); decisions and the reuse path stay in Python, so a step's plan never triggers a recompile.
    It also turns torch._dynamo's `skip_nnmodule_hook_guards` off (graphs then guard on module hooks) until
    `remove_dqar`, which restores the previous value (nested attachments: remove in reverse order).
    """
    if config is None:
        config = DQARConfig.preset("dqar")
    elif isinstance(config, str):
        config = DQARConfig.preset(config)
    elif not isinstance(config, DQARConfig):
        raise TypeError(f"config must be a DQARConfig, a preset name or None, got {type(config).__name__}")
    if getattr(transformer, _ATTR, None) is not None:
        raise RuntimeError(f"DQAR is already attached to this {type(transformer).__name__}; call remove_dqar first")
    points = attachment_points(transformer, per_block=config.granularity in ("block", "stack"))
    if not points:
        raise ValueError(no_self_attention(transformer))
    why = family_refusal(transformer, config.granularity, points)
    if why:
        raise ValueError(why)
    ctl = DQARController(config, [n for n, _, _ in points], scheduler, prompt_length)
    layers = [_Layer(i, m) for i, (_, m, _) in enumerate(points)]

    ctl._layers, ctl._handles = layers, []
    if compile:  # graphs compiled before DQAR's Q/K hooks existed must not be reused without them
        ctl._prev_skip_hook_guards = torch._dynamo.config.skip_nnmodule_hook_guards  # _detach restores it
        torch._dynamo.config.skip_nnmodule_hook_guards = False

    def compile_fn(fn):
        return torch.compile(fn, **(compile_options or {})) if compile else fn

    try:
        for layer, (_, _, block) in zip(layers, points):
            _attach_layer(ctl, layer, block, compile_fn)
    except Exception:  # all or nothing: undo the layers attached so far
        _detach(ctl)
        raise

    params = inspect.signature(transformer.forward)
    t_scale = timestep_scale(transformer)  # Flux-style families take t / 1000

    def pre(_mod, args, kwargs):
        bound = params.bind_partial(*args, **kwargs).arguments
        t_in = bound.get("timestep", bound.get("timesteps"))  # HiDream names it timesteps
        t = ctl.host_timestep(t_in)
        if t is not None and t_scale != 1 and not (torch.is_tensor(t_in) and t_in.device.type != "cpu"
                                                  and ctl.scheduler is not None):
            t *= t_scale  # a device timestep was read off the scheduler's schedule, already on its scale
        t = scheduler_timestep(ctl.scheduler, t, ctl.num_train_timesteps)  # a stepping flow-matching scheduler's
        ctl.begin_step(t, lambda: _prompt_tokens(bound))

    def post(_mod, args, kwargs, output):
        bound = params.bind_partial(*args, **kwargs).arguments
        out = output.sample if hasattr(output, "sample") else output[0]  # a tuple with return_dict=False
        ctl.end_step(bound["hidden_states"], out)

    ctl._handles = [transformer.register_forward_pre_hook(pre, with_kwargs=True),
                    transformer.register_forward_hook(post, with_kwargs=True)]
    setattr(transformer, _ATTR, ctl)
    return ctl


def remove_dqar(transformer: torch.nn.Module) -> DQARController | None:
    """Detach DQAR and restore the model exactly; returns the controller (None if nothing was attached)."""
    ctl = getattr(transformer, _ATTR, None)
    if ctl is None:
        return None
    _detach(ctl)
    delattr(transformer, _ATTR)
    return ctl


def _detach(ctl: DQARController) -> None:
    """Remove every hook and patched forward of `ctl`, clear its cache, restore the dynamo flag it changed."""
    for h in ctl._handles:
        h.remove()
    for layer in ctl._layers:
        for h in layer.handles:
            h.remove()
        for mod in layer.patched:
            del mod.forward
    ctl.cache.clear()
    prev = vars(ctl).pop("_prev_skip_hook_guards", None)
    if prev is not None:
        torch._dynamo.config.skip_nnmodule_hook_guards = prev


def get_controller(transformer: torch.nn.Module) -> DQARController | None:
    return getattr(transformer, _ATTR, None)


@contextlib.contextmanager
def dqar(pipe_or_transformer, config: DQARConfig | str | None = "dqar", **apply_kwargs):
    """`with dqar(pipe, "dqar"): images = pipe(...)`: DQAR attached to `pipe.transformer` with `pipe.scheduler`
    for the block, removed on exit (an exception included); yields the controller.

    A bare transformer works too (pass `scheduler=` in `apply_kwargs` for SNR_t on its schedule). `cfg_layout`
    becomes the pipeline's own (`families.cfg_layout`): PixArt, SD3, Sana, HunyuanDiT and AuraFlow pipelines put the
    unconditional half of a CFG batch first ("cond_second"), DiT's puts it second ("cond_first", the default).
    """
    transformer = getattr(pipe_or_transformer, "transformer", pipe_or_transformer)
    if not isinstance(transformer, torch.nn.Module):
        raise TypeError(f"dqar() needs a diffusers pipeline with a .transformer or a transformer module, got "
                        f"{type(pipe_or_transformer).__name__}")
    if transformer is not pipe_or_transformer:
        apply_kwargs.setdefault("scheduler", getattr(pipe_or_transformer, "scheduler", None))
        layout = cfg_layout(pipe_or_transformer)
        if layout is not None:
            config = config if isinstance(config, DQARConfig) else DQARConfig.preset(config or "dqar")
            config = config.replace(cfg_layout=layout)
    ctl = apply_dqar(transformer, config, **apply_kwargs)
    try:
        yield ctl
    finally:
        if get_controller(transformer) is ctl:
            remove_dqar(transformer)
