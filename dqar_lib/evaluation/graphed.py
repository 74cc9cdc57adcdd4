"""Full compute with each denoiser call replayed from a CUDA graph: the strongest full-compute baseline on a GPU.

    method = CUDAGraphFull()                  # a Method: bench_sampling(model, labels, {"full": None,
    rows = bench_sampling(model, ...)         #   "full, CUDA graph": method, ...}) times it beside the others

The first call with a given set of input shapes captures the model's forward (after warm-up calls on a side
stream, as PyTorch's CUDA-graph notes ask); every later call copies its inputs into the captured ones and replays
the graph, so no kernel is launched from Python. In a compiled benchmark the captured forward runs the compiled
blocks: compiled and CUDA-graphed. The graphs are kept across `apply`/`remove`, so a benchmark's warm-up run
captures them and its timed runs only replay. CUDA only: on another device `apply` refuses in one sentence.
"""

from __future__ import annotations

import torch

from .methods import Method


def _key(kwargs: dict) -> tuple:
    """What a captured graph is valid for: each tensor's name, shape, dtype and device, and every other value."""
    return tuple(sorted((k, (tuple(v.shape), v.dtype, v.device) if torch.is_tensor(v) else repr(v))
                        for k, v in kwargs.items()))


class CUDAGraphFull(Method):
    """Full compute, each model call a CUDA-graph replay (captured once per input shape). `warmup`: eager calls on
    a side stream before capture."""

    name = "full, CUDA graph"
    replays_graphs = True

    def __init__(self, warmup: int = 2):
        if not isinstance(warmup, int) or warmup < 1:
            raise ValueError(f"warmup must be a positive integer (calls before capture), got {warmup!r}")
        self.params = {"warmup": warmup}
        self._graphs: dict[tuple, tuple] = {}  # key -> (graph, static inputs, static output)
        self._model = None

    def apply(self, model: torch.nn.Module) -> None:
        if "forward" in vars(model):
            raise RuntimeError(f"{type(model).__name__} already has a patched forward (a CUDA graph or another "
                               "method is attached); remove it first")
        device = next(model.parameters()).device
        if device.type != "cuda":
            raise ValueError(f"CUDAGraphFull replays CUDA graphs and needs a model on a CUDA device; this one is on "
                             f"{device}")
        if self._model is not model:
            self._graphs, self._model = {}, model
        original = model.forward

        def forward(hidden_states, **kwargs):
            kwargs = dict(kwargs, hidden_states=hidden_states)
            key = _key(kwargs)
            if key not in self._graphs:
                self._graphs[key] = self._capture(original, kwargs)
            graph, static_in, static_out = self._graphs[key]
            for k, v in kwargs.items():
                if torch.is_tensor(v):
                    static_in[k].copy_(v)
            graph.replay()
            return type(static_out)(sample=static_out.sample.clone())

        model.forward = forward

    def _capture(self, original, kwargs: dict) -> tuple:
        static_in = {k: v.clone() if torch.is_tensor(v) else v for k, v in kwargs.items()}
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), torch.no_grad():
            for _ in range(self.params["warmup"]):
                original(**static_in)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph), torch.no_grad():
            static_out = original(**static_in)
        return graph, static_in, static_out

    def remove(self, model: torch.nn.Module) -> None:
        vars(model).pop("forward", None)
