import pytest
import torch

from dqar_lib import tiny_dit, tiny_pixart


@pytest.fixture
def dit():
    return tiny_dit()


@pytest.fixture
def pixart():
    return tiny_pixart()


@pytest.fixture
def fresh_reuse_warnings(monkeypatch):
    """`sample` warns once per (model class, config) that DQAR reused nothing; a test that expects the warning
    (`pytest.warns`) starts from an empty record, so that an earlier test's run of that config cannot swallow it."""
    from dqar_lib.models import sampling

    monkeypatch.setattr(sampling, "_WARNED", set())


def dit_inputs(batch=4, size=8, t=500):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 3, size, size, generator=g)
    return dict(hidden_states=x, timestep=torch.full((batch,), t), class_labels=torch.arange(batch) % 10)


def pixart_inputs(batch=2, size=8, t=500):
    g = torch.Generator().manual_seed(1)
    return dict(hidden_states=torch.randn(batch, 4, size, size, generator=g),
                encoder_hidden_states=torch.randn(batch, 5, 16, generator=g),
                timestep=torch.full((batch,), t), added_cond_kwargs={"resolution": None, "aspect_ratio": None})


def run_steps(model, make_inputs, timesteps=(900, 700, 500, 300, 100), **kw):
    """Call the model once per timestep (a sampler's view of it), returning every output."""
    with torch.no_grad():
        return [model(**make_inputs(t=t, **kw)).sample for t in timesteps]


# `make test-fast` runs `pytest -m "not slow"`; these take the most time (papermill runs, whole command lines,
# subprocesses, training, many samples) and are marked `slow` here, in one place, rather than in each file.
# Their faults are still guarded in the fast subset where a direct test exists (tests/README.md).
SLOW_FILES = {"test_notebooks.py", "test_benchmark_cli.py", "test_pipe_benchmark.py", "test_distributed.py",
              "test_train.py", "test_install.py", "test_cli_scaffold.py"}
SLOW_TESTS = {  # "file.py::test_name" (every parameter of it): each took 2 s to 25 s on a loaded 2-core CPU
    "test_bench.py::test_gpu_bench_cli_runs_on_cpu", "test_bench.py::test_gpu_bench_runs_pixart_on_caption_embeddings",
    "test_bench.py::test_bench_compiled_dqar_uses_regional_compile", "test_bench.py::test_bench_compile_is_undone",
    "test_bench.py::test_compiled_run_that_would_fall_back_to_eager_is_refused",
    "test_bench.py::test_gpu_bench_runs_only_the_named_methods_and_modes",
    "test_forecast_policy.py::test_fit_and_evaluate_runs_end_to_end_and_refuses_overlap",
    "test_policy_fit.py::test_fit_and_evaluate_policy_end_to_end",
    "test_hooks.py::test_compiled_compute_paths_do_not_recompile_per_step",
}


@pytest.fixture(scope="session")
def folders(tmp_path_factory):
    """A tiny DiT and a tiny PixArt pipeline saved as folders, as the command lines load them."""
    from dqar_lib.models.pipelines import tiny_dit_pipeline, tiny_pixart_pipeline

    root = tmp_path_factory.mktemp("pipelines")
    tiny_dit_pipeline().save_pretrained(root / "dit")
    tiny_pixart_pipeline().save_pretrained(root / "pixart")
    return root


def cli_error(capsys, argv) -> str:
    """The last line `python -m dqar_lib.benchmark` writes to stderr when it refuses `argv` (exit status 2)."""
    from dqar_lib import benchmark

    with pytest.raises(SystemExit) as e:
        benchmark.main([str(a) for a in argv])
    assert e.value.code == 2
    return capsys.readouterr().err.strip().splitlines()[-1]


def pytest_collection_modifyitems(config, items):
    for item in items:
        name = item.path.name
        if name in SLOW_FILES or f"{name}::{item.originalname}" in SLOW_TESTS:
            item.add_marker(pytest.mark.slow)
