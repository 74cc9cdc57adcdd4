"""One interface for every method the benchmark runs: DQAR, diffusers' caches, W8A8 and torchao low-bit weights.

    res = run_method(model, "dqar", labels, num_steps=20)         # a preset, a DQARConfig, a Method or None
    res = run_method(model, PEERS["pab"](), labels, num_steps=20)  # prepare, apply, sample(step_callback), remove

A `Method` is prepared once for a sampling setting (`prepare`: calibration, quantized weights, the scheduler),
then attached (`apply`) and detached (`remove`) around each run, which must leave the model exactly as it was;
`sample` calls its `step_callback(i, t)` before each model call (a no-op unless the method needs the step).
tests/test_contract.py holds every method to that contract. `as_method` turns what a caller names into one.
"""

from __future__ import annotations

import abc
import copy
import inspect
import reprlib
from collections.abc import Callable

import torch

from ..method.config import PRESETS, DQARConfig
from ..method.controller import DQARController
from ..method.hooks import apply_dqar, get_controller, remove_dqar
from ..models.sampling import SampleResult, make_scheduler, sample

_SAMPLE_DEFAULTS = {k: p.default for k, p in inspect.signature(sample).parameters.items()}


class Method(abc.ABC):
    """A method the benchmark can run. Subclasses set `name` (for reports) and `params` (its settings, a dict).

    `prepare(model, labels, **sample_kwargs)` runs once per sampling setting (the kwargs `sample` will get), before
    `apply`; `apply(model)` attaches, refusing a second attachment; `remove(model)` restores the model exactly
    (a second call is a no-op); `step_callback(i, t)` runs before each model call while applied.
    """

    name: str
    params: dict
    replays_graphs: bool = False
    """True for a method whose model calls are CUDA-graph replays: no module hook fires in them, so the benchmark
    must not count its calls (dqar_lib.evaluation.graphed.CUDAGraphFull)."""

    def prepare(self, model: torch.nn.Module, labels, **sample_kwargs) -> None:
        """Nothing to prepare by default."""
        return None

    @abc.abstractmethod
    def apply(self, model: torch.nn.Module) -> None:
        """Attach to `model`; a RuntimeError if this method (or its kind) is already attached to it."""

    @abc.abstractmethod
    def remove(self, model: torch.nn.Module) -> None:
        """Detach from `model`, leaving it bit-identical to before `apply`; a no-op if not applied."""

    def step_callback(self, i: int, t) -> None:
        """Called by `sample` before model call i at timestep t; nothing to do by default."""
        return None


class DQARMethod(Method):
    """DQAR as a Method: `apply` is `apply_dqar`, `remove` is `remove_dqar`, `stats()` its controller's.

    config: a DQARConfig or a preset name (the name then names the method; a config is named "dqar").
    `params` are the config's fields that differ from DQARConfig's defaults. `prepare` builds the scheduler
    that `sample` builds for the same kwargs, so the controller reads SNR_t and host timesteps from the run's
    schedule (a scheduler given here is used until then). `compile=True` compiles DQAR's compute paths on their
    own (regional compile, `compile_options` to torch.compile); `compiled()` returns such a copy.
    """

    def __init__(self, config: DQARConfig | str = "dqar", scheduler=None, prompt_length: int | None = None,
                 compile: bool = False, compile_options: dict | None = None):
        if isinstance(config, str):
            name, config = config, DQARConfig.preset(config)
        elif isinstance(config, DQARConfig):
            name = "dqar"
        else:
            raise ValueError(f"DQARMethod needs a DQARConfig or a preset name, got {_short(config)}")
        self.name, self.config, self.params = name, config, config.changes()
        self.scheduler, self.prompt_length = scheduler, prompt_length
        self.compile, self.compile_options = compile, compile_options
        self.controller: DQARController | None = None
        self._model: torch.nn.Module | None = None

    def __repr__(self) -> str:
        return f"DQARMethod({self.name!r}, params={self.params!r}, compile={self.compile})"

    def compiled(self, compile_options: dict | None = None) -> DQARMethod:
        """A detached copy that compiles DQAR's compute paths on their own (`apply_dqar(compile=True)`)."""
        twin = copy.copy(self)
        twin.compile, twin.compile_options, twin.controller, twin._model = True, compile_options, None, None
        return twin

    def prepare(self, model: torch.nn.Module, labels=None, **sample_kwargs) -> None:
        """The scheduler `sample(model, labels, **sample_kwargs)` will step, with its timesteps set."""
        sched = make_scheduler(sample_kwargs.get("scheduler", _SAMPLE_DEFAULTS["scheduler"]),
                               pixel_space=model.config.in_channels == 3)
        sched.set_timesteps(sample_kwargs.get("num_steps", _SAMPLE_DEFAULTS["num_steps"]))
        self.scheduler = sched

    def apply(self, model: torch.nn.Module) -> None:
        """`apply_dqar` with this method's config, scheduler, prompt length and compile settings."""
        if self._model is not None:
            raise RuntimeError(f"DQAR method {self.name!r} is already applied; call remove first")
        self.controller = apply_dqar(model, self.config, scheduler=self.scheduler, prompt_length=self.prompt_length,
                                     compile=self.compile, compile_options=self.compile_options)
        self._model = model

    def remove(self, model: torch.nn.Module) -> None:
        """`remove_dqar`; the controller stays readable (`stats()`)."""
        if self._model is None:
            return
        if model is not self._model:
            raise ValueError(f"DQAR method {self.name!r} is applied to another model")
        if get_controller(model) is self.controller:
            remove_dqar(model)
        self._model = None

    def stats(self) -> dict:
        """The controller's statistics of the last run ({} before the first apply)."""
        return self.controller.stats() if self.controller is not None else {}


def _short(x) -> str:
    return f"{reprlib.repr(x)} ({type(x).__name__})"


def as_method(x) -> Method | None:
    """None (full compute) stays None; a preset name or a DQARConfig becomes a DQARMethod; a Method is itself.

    Anything else is a ValueError naming it. A diffusers peer is a Method object, not a name
    (`dqar_lib.evaluation.peers.get_peer(name)`).
    """
    if x is None or isinstance(x, Method):
        return x
    if isinstance(x, str):
        if x not in PRESETS:
            raise ValueError(f"unknown DQAR preset {x!r}; known presets: {', '.join(PRESETS)} (a diffusers peer is "
                             f"a Method: dqar_lib.evaluation.peers.get_peer(name))")
        return DQARMethod(x)
    if isinstance(x, DQARConfig):
        return DQARMethod(x)
    raise ValueError(f"a method is None (full compute), a DQAR preset name, a DQARConfig or a Method; "
                     f"got {_short(x)}")


def method_fields(method: Method | None) -> dict | None:
    """DQAR: the config's fields that differ from DQARConfig's defaults; a peer: its name and params; full: None."""
    if method is None:
        return None
    if isinstance(method, DQARMethod):
        return dict(method.params)
    return {"peer": method.name, **method.params}


def run_method(model: torch.nn.Module, method, labels=None, *, prepare: bool = True,
               around: Callable[[Callable[[], SampleResult]], SampleResult] | None = None,
               **sample_kwargs) -> SampleResult:
    """Sample with `method` (anything `as_method` takes) attached for this call only, removed even on error.

    `method.prepare(model, labels, **sample_kwargs)` runs first unless `prepare=False` (prepared already, as the
    benchmark does once for all its repeats); then `apply`, `sample(model, labels, step_callback=...)`, `remove`.
    `compile` / `compile_options` (as for `sample(dqar=..., compile=True)`) compile DQAR's compute paths on their
    own; other methods do not take them. `around(run)`, if given, makes the sampling call `run()` and returns its
    result (the benchmark times it there, outside prepare, apply and remove).
    """
    for key in ("dqar", "step_callback"):
        if key in sample_kwargs:
            raise ValueError(f"run_method sets {key} itself; pass the method instead, got {key}={sample_kwargs[key]!r}")
    method = as_method(method)
    compile, compile_options = sample_kwargs.pop("compile", False), sample_kwargs.pop("compile_options", None)
    if compile:
        if not isinstance(method, DQARMethod):
            raise ValueError(f"compile=True compiles DQAR's compute paths; {_short(method)} takes no compile")
        method = method.compiled(compile_options)
    around = around or (lambda run: run())
    if method is None:
        return around(lambda: sample(model, labels, **sample_kwargs))
    if prepare:
        method.prepare(model, labels, **sample_kwargs)
    method.apply(model)
    try:
        return around(lambda: sample(model, labels, step_callback=method.step_callback, **sample_kwargs))
    finally:
        method.remove(model)
