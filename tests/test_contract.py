"""The attach contract every benchmark method keeps (in the spirit of diffusers' CacheTesterMixin).

Each method (DQAR at every granularity and CFG layout, every diffusers peer in PEERS, W8A8, torchao INT8)
is driven on the tiny models as a sampler drives it: `step_callback(i, t)`, then one model call, per step.

(a) attached with reuse or quantization active, it changes the output (and `prepare` alone does not);
(b) DQAR switched off (`enabled=False`) is bit-identical to the bare model;
(c) after `remove` the output is bit-identical to before `apply`;
(d) nothing is left behind: no instance `forward`, no forward (pre-)hooks, no diffusers hook registry with hooks,
    no new module attribute, the same Parameter objects with the same values;
(e) a second `apply` (the same instance, or another of the same kind) is a RuntimeError that leaves the attached
    one working; a second `remove` is a no-op;
(f) CFG sharing: a shared step's output is the conditional half computed alone, in both halves, per layout.
"""

import inspect
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
from conftest import dit_inputs, pixart_inputs
from torch.nn.modules import module as nn_module

from dqar_lib import DQARConfig, sample, tiny_dit
from dqar_lib.evaluation.lowbit import TorchaoPeer
from dqar_lib.evaluation.methods import DQARMethod, Method, as_method, run_method
from dqar_lib.evaluation.peers import PEERS, Peer
from dqar_lib.evaluation.ptq import W8A8Peer
from dqar_lib.method.config import CFG_LAYOUTS, GRANULARITIES
from dqar_lib.method.hooks import self_attention_modules
from dqar_lib.models.sampling import make_scheduler

NUM_STEPS = 9
_sched = make_scheduler("ddim")
_sched.set_timesteps(NUM_STEPS)
TIMESTEPS = [int(t) for t in _sched.timesteps]  # the timesteps `sample` steps through, so prepare() matches
# A static plan that computes at steps 0, 1, 3, 5, 7 (CFG-shared from step 1 on) and reuses at 2, 4, 6, 8.
PLAN = tuple((s % 2 == 0 and s > 0,) * 8 for s in range(NUM_STEPS))
INPUTS = {"dit": dit_inputs, "pixart": pixart_inputs}
LABELS = {"dit": [1, 2], "pixart": None}


@dataclass
class Case:
    """One method under contract: `new()` builds a fresh instance (a DQARMethod of `config` for DQAR cases);
    `models` it runs on."""

    id: str
    make: Callable[[], Method] | None = None
    models: tuple[str, ...] = ("dit", "pixart")
    config: DQARConfig | None = None  # DQAR cases only

    def new(self) -> Method:
        return DQARMethod(self.config) if self.config is not None else self.make()


def _dqar_config(granularity: str, layout: str) -> DQARConfig:
    share = granularity not in ("kv", "stack")  # CFG sharing shares a block's output; K/V and the stack have none
    return DQARConfig.preset("always", always_reuse=False, static_plan=PLAN, granularity=granularity,
                             cfg_layout=layout, cfg_share_from=0.0 if share else None)


DQAR_CASES = [Case(f"dqar-{g}-{lay}" + ("" if g in ("kv", "stack") else "-share"), config=_dqar_config(g, lay))
              for g in GRANULARITIES for lay in CFG_LAYOUTS]
CASES = DQAR_CASES + [
    *[Case(f"peer-{name}", factory, models=("dit",) if name == "magcache" else ("dit", "pixart"))
      for name, factory in PEERS.items() if name != "cachedit"],  # MagCache calibrates on labels: DiT only
    # cache-dit's DiT adapter takes DiT only; its default 8 warmup steps would leave nothing to skip in 9 steps
    Case("peer-cachedit", lambda: PEERS["cachedit"](residual_diff_threshold=0.5, max_warmup_steps=2), models=("dit",)),
    Case("w8a8", lambda: W8A8Peer(calib_steps=2), models=("dit",)),  # calibrates on labels: DiT only
    Case("torchao-int8_dynamic", lambda: TorchaoPeer("int8_dynamic")),
]


def _params(cases):
    return [pytest.param(c, m, id=f"{c.id}-{m}") for c in cases for m in c.models]


ALL = _params(CASES)
DQAR = _params(DQAR_CASES)
SHARING = _params([c for c in DQAR_CASES if c.config.cfg_share_from is not None])


def drive(model, method: Method | None, inputs) -> list[torch.Tensor]:
    """One run as a sampler makes it: step_callback(i, t), then the model call, at every timestep."""
    outs = []
    with torch.no_grad():
        for i, t in enumerate(TIMESTEPS):
            if method is not None:
                method.step_callback(i, torch.tensor(t))
            outs.append(model(**inputs(t=t)).sample)
    return outs


def same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def prepared(case: Case, name: str, model) -> Method:
    method = case.new()
    method.prepare(model, LABELS[name], num_steps=NUM_STEPS)
    return method


def _model(request, name):
    """A fresh tiny model (conftest's `dit` / `pixart` fixture) and its inputs."""
    return request.getfixturevalue(name), INPUTS[name]


def footprint(model) -> dict:
    """Everything a method could leave behind, per module: attribute names, hooks, diffusers hooks, parameters."""
    out = {}
    for n, m in model.named_modules():
        registry = getattr(m, "_diffusers_hook", None)
        out[n] = dict(
            attrs=set(vars(m)),
            forward="forward" in vars(m),
            hooks=sum(len(d) for d in (m._forward_hooks, m._forward_pre_hooks, m._forward_hooks_with_kwargs,
                                       m._forward_pre_hooks_with_kwargs)),
            diffusers_hooks=list(registry.hooks) if registry is not None else [],
            params={k: p for k, p in m._parameters.items()},
            buffers={k: b for k, b in m._buffers.items()},
        )
    return out


def assert_clean(model, before: dict, values: dict) -> None:
    """(d): the footprint is what it was, and parameter values are unchanged."""
    now = footprint(model)
    assert now.keys() == before.keys(), "modules were added or removed"
    forwards = [n for n, f in now.items() if f["forward"]]
    assert not forwards, f"instance forward left on {forwards}"
    hooked = [n for n, f in now.items() if f["hooks"]]
    assert not hooked, f"forward (pre-)hooks left on {hooked}"
    registries = [n for n, f in now.items() if f["diffusers_hooks"]]
    assert not registries, f"diffusers hooks left on {registries}"
    attrs = {n: sorted(f["attrs"] ^ before[n]["attrs"]) for n, f in now.items() if f["attrs"] != before[n]["attrs"]}
    assert not attrs, f"module attributes added or removed: {attrs}"
    swapped = [f"{n}.{k}" for n, f in now.items() for k, p in f["params"].items() if p is not before[n]["params"][k]]
    assert not swapped, f"parameters replaced: {swapped}"
    swapped = [f"{n}.{k}" for n, f in now.items() for k, b in f["buffers"].items() if b is not before[n]["buffers"][k]]
    assert not swapped, f"buffers replaced: {swapped}"
    changed = [k for k, p in model.state_dict().items() if not torch.equal(p, values[k])]
    assert not changed, f"parameter values changed: {changed}"
    assert not nn_module._global_forward_hooks and not nn_module._global_forward_pre_hooks


# ---- the contract ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("case,name", ALL)
def test_a_attached_changes_the_output(request, case, name):
    model, inputs = _model(request, name)
    ref = drive(model, None, inputs)
    method = prepared(case, name, model)
    assert same(drive(model, None, inputs), ref), "prepare changed the model"
    method.apply(model)
    try:
        out = drive(model, method, inputs)
    finally:
        method.remove(model)
    assert torch.equal(out[0], ref[0]) or case.config is None  # DQAR computes its first step
    assert not same(out, ref), f"{case.id} attached changed nothing"
    if case.config is not None:
        s = method.stats()
        assert s["reuse_fraction"] > 0 and (s["cfg_shared"] > 0) == (case.config.cfg_share_from is not None)


@pytest.mark.parametrize("case,name", DQAR)
def test_b_dqar_off_is_bit_identical(request, case, name):
    model, inputs = _model(request, name)
    ref = drive(model, None, inputs)
    method = DQARMethod(case.config.replace(enabled=False))
    method.apply(model)
    try:
        out = drive(model, method, inputs)
    finally:
        method.remove(model)
    assert same(out, ref)
    assert method.stats()["reuse_fraction"] == 0.0 and method.stats()["cfg_shared"] == 0


@pytest.mark.parametrize("case,name", ALL)
def test_c_removal_restores_the_output(request, case, name):
    model, inputs = _model(request, name)
    ref = drive(model, None, inputs)
    method = prepared(case, name, model)
    method.apply(model)
    drive(model, method, inputs)
    method.remove(model)
    assert same(drive(model, None, inputs), ref)


@pytest.mark.parametrize("case,name", ALL)
def test_d_removal_leaves_nothing_behind(request, case, name):
    model, inputs = _model(request, name)
    before, values = footprint(model), {k: v.clone() for k, v in model.state_dict().items()}
    method = prepared(case, name, model)
    method.apply(model)
    drive(model, method, inputs)
    method.remove(model)
    assert_clean(model, before, values)


@pytest.mark.parametrize("case,name", ALL)
def test_e_attaching_twice_refuses(request, case, name):
    model, inputs = _model(request, name)
    ref = drive(model, None, inputs)
    before, values = footprint(model), {k: v.clone() for k, v in model.state_dict().items()}
    method, other = prepared(case, name, model), prepared(case, name, model)
    method.apply(model)
    attached = drive(model, method, inputs)
    with pytest.raises(RuntimeError, match="already"):
        method.apply(model)
    with pytest.raises(RuntimeError, match="already"):
        other.apply(model)  # another instance of the same kind
    other.remove(model)  # never applied: a no-op that must not detach `method`
    assert same(drive(model, method, inputs), attached), "a refused attach disturbed the attached method"
    method.remove(model)
    method.remove(model)
    assert same(drive(model, None, inputs), ref)
    assert_clean(model, before, values)


def _halves(x, B: int, first: bool, cond: bool = True):
    """The conditional (or the other) half of a batch-sized tensor; anything else passes through."""
    if torch.is_tensor(x) and x.ndim > 0 and x.shape[0] == B:
        return x[:B // 2] if first == cond else x[B // 2:]
    return x


@pytest.mark.parametrize("case,name", SHARING)
def test_f_cfg_sharing_serves_the_conditional_half(request, case, name):
    model, inputs = _model(request, name)
    cfg = case.config
    first, block = cfg.cfg_layout == "cond_first", cfg.granularity == "block"
    mods = [m for _, m in self_attention_modules(model)]
    mods = list(model.transformer_blocks) if block else mods
    calls = []
    handles = [m.register_forward_hook(lambda mod, args, kwargs, out, i=i: calls.append((i, args, kwargs, out)),
                                       with_kwargs=True) for i, m in enumerate(mods)]
    method = prepared(case, name, model)
    method.apply(model)
    try:
        with torch.no_grad():
            for i, t in enumerate(TIMESTEPS[:2]):  # step 0 computes, step 1 computes CFG-shared
                method.step_callback(i, torch.tensor(t))
                calls.clear()
                model(**inputs(t=t))
    finally:
        method.remove(model)
        for h in handles:
            h.remove()
    assert method.stats()["cfg_shared"] == len(mods) and len(calls) == len(mods)
    for i, args, kwargs, out in calls:  # every layer at the shared step, against the bare layer on its inputs
        hs = inspect.signature(mods[i].forward).bind(*args, **kwargs).arguments["hidden_states"]
        B = hs.shape[0]
        assert not torch.equal(_halves(hs, B, first), _halves(hs, B, first, cond=False)), "the halves must differ"
        with torch.no_grad():
            bare = mods[i](*[_halves(a, B, first) for a in args],
                           **{k: _halves(v, B, first) for k, v in kwargs.items()})
        if block:  # the block adds its residual: both halves take the conditional half's
            res, want = out - hs, bare - _halves(hs, B, first)
            assert torch.allclose(res[:B // 2], want, atol=1e-5) and torch.allclose(res[B // 2:], want, atol=1e-5), \
                f"block {i}: the shared residual is not the conditional half's"
        else:
            assert torch.equal(out[:B // 2], bare) and torch.equal(out[B // 2:], bare), \
                f"layer {i}: the shared attention output is not the conditional half's"


# ---- the interface -------------------------------------------------------------------------------------


def test_every_method_is_a_method():
    for method in [DQARMethod("always"), *(f() for f in PEERS.values()), W8A8Peer(), TorchaoPeer()]:
        assert isinstance(method, Method) and isinstance(method.name, str) and isinstance(method.params, dict)
    for method in (DQARMethod("always"), W8A8Peer(), TorchaoPeer()):  # a real no-op, not a None stand-in
        assert method.step_callback(0, 999) is None
    with pytest.raises(TypeError, match="abstract"):
        Method()
    assert issubclass(Peer, Method)


def test_as_method_turns_names_configs_and_methods_into_methods():
    assert as_method(None) is None
    m = as_method("always")
    assert isinstance(m, DQARMethod) and m.name == "always" and m.config == DQARConfig.preset("always")
    assert m.params == m.config.changes() != {} and m.params["decide.kind"] == "always"
    cfg = DQARConfig.preset("static")
    assert as_method(cfg).config is cfg and as_method(cfg).name == "dqar"
    peer = PEERS["pab"]()
    assert as_method(peer) is peer
    with pytest.raises(ValueError, match="unknown DQAR preset 'pab'.*get_peer"):
        as_method("pab")
    with pytest.raises(ValueError, match=r"got 3 \(int\)"):
        as_method(3)
    with pytest.raises(ValueError, match=r"got \{'granularity': 'attn'\} \(dict\)"):
        as_method({"granularity": "attn"})


@pytest.mark.parametrize("scheduler", ["ddim", "dpm"])
@pytest.mark.parametrize("config", ["dqar", "always", DQARConfig.preset("gates", tau=1.0, snr_lo=0.0, warmup=0.0,
                                                                            granularity="attn", cfg_share=True)])
def test_run_method_runs_dqar_exactly_as_sample_does(config, scheduler):
    model = tiny_dit()
    kw = dict(num_steps=8, scheduler=scheduler, progress=False)
    ref = sample(model, [1, 2], dqar=config, **kw)
    res = run_method(model, config, [1, 2], **kw)
    assert torch.equal(res.latents, ref.latents) and torch.equal(res.images, ref.images)
    timing = ("decision_seconds",)
    assert {k: v for k, v in res.stats.items() if k not in timing} == {k: v for k, v in ref.stats.items()
                                                                       if k not in timing}
    assert res.stats["steps"] == 8 and not any("forward" in vars(m) for m in model.modules())


def test_run_method_full_compute_and_bad_arguments():
    model = tiny_dit()
    assert torch.equal(run_method(model, None, [1], num_steps=2, progress=False).latents,
                       sample(model, [1], num_steps=2, progress=False).latents)
    with pytest.raises(ValueError, match="run_method sets dqar itself"):
        run_method(model, None, [1], num_steps=2, dqar="always")
    with pytest.raises(ValueError, match="run_method sets step_callback itself"):
        run_method(model, "always", [1], num_steps=2, step_callback=print)
    with pytest.raises(ValueError, match="compile=True compiles DQAR's compute paths"):
        run_method(model, W8A8Peer(), [1], num_steps=2, compile=True)
