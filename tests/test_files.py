"""The one data lookup (dqar_lib.method.files): $DQAR_DATA, then the installed package's data, then the checkout's
data/; data-relative names in presets and old absolute paths in stored manifests both load."""

import dataclasses

import pytest
import torch

from dqar_lib import artifacts
from dqar_lib.method import files
from dqar_lib.method.config import PRESETS
from dqar_lib.method.files import DATA_ENV, data_dirs, data_file, load_tagged, resolve
from dqar_lib.method.policy import load_policy

SHIPPED = (files.DEFAULT_MODEL, files.DEFAULT_CLASSIFIER, files.DEFAULT_POLICY, files.DEFAULT_FORECAST_POLICY,
           files.DEFAULT_CACHE_CALIBRATION, files.PROMPTS)


@pytest.fixture
def no_env(monkeypatch):
    monkeypatch.delenv(DATA_ENV, raising=False)


def test_every_shipped_file_is_found_in_the_checkout(no_env):
    for name in SHIPPED:
        assert data_file(name) == files.CHECKOUT_DATA / name


def test_dqar_data_comes_first(monkeypatch, tmp_path):
    mine = tmp_path / "policy" / "policy.pt"
    mine.parent.mkdir()
    torch.save({"format": "test/1"}, mine)
    monkeypatch.setenv(DATA_ENV, str(tmp_path))
    assert data_dirs() == [tmp_path, files.PACKAGE_DATA, files.CHECKOUT_DATA]
    assert data_file("policy/policy.pt") == mine
    assert data_file("policy/forecast_policy.pt") == files.CHECKOUT_DATA / "policy" / "forecast_policy.pt"  # not mine
    assert load_tagged("policy/policy.pt", "test/1", "test") == {"format": "test/1"}


def test_a_name_found_nowhere_names_every_place_looked(monkeypatch, tmp_path):
    monkeypatch.setenv(DATA_ENV, str(tmp_path))
    with pytest.raises(FileNotFoundError) as e:
        data_file("policy/nothing.pt")
    for d in data_dirs():
        assert str(d / "policy" / "nothing.pt") in str(e.value)
    with pytest.raises(FileNotFoundError, match=r"policy file not found: .*'policy/nothing\.pt'.*" + DATA_ENV):
        load_policy("policy/nothing.pt")


def test_resolve_takes_paths_as_given_and_names_through_the_lookup(no_env, tmp_path, monkeypatch):
    here = tmp_path / "x.pt"
    here.write_bytes(b"")
    assert resolve(here) == here and resolve(str(here)) == here
    assert resolve("/no/such/file.pt") == files.Path("/no/such/file.pt")  # absolute, outside any data/: as given
    assert resolve("policy/policy.pt") == files.CHECKOUT_DATA / "policy" / "policy.pt"
    # an absolute path an older run stored, from another checkout: found by its name below data/
    assert resolve("/elsewhere/dqar/data/policy/policy.pt") == files.CHECKOUT_DATA / "policy" / "policy.pt"
    assert resolve("/elsewhere/dqar/data/policy/gone.pt") == files.Path("/elsewhere/dqar/data/policy/gone.pt")
    monkeypatch.chdir(tmp_path)
    assert resolve("x.pt") == files.Path("x.pt")  # an existing relative path is a path, not a name


def file_fields(fields, prefix=""):
    """(dotted name, value) of every field that names a file (`path`, `calibration`), nested groups too."""
    if dataclasses.is_dataclass(fields):
        fields = {f.name: getattr(fields, f.name) for f in dataclasses.fields(fields)}
    for k, v in fields.items() if isinstance(fields, dict) else ():
        if isinstance(v, str) and (k.endswith("path") or k.endswith("calibration")):
            yield prefix + k, v
        yield from file_fields(v, f"{prefix}{k}.")


def test_presets_name_shipped_files_that_load(no_env):
    """Every preset field that names a file resolves, wherever the process runs."""
    named = {(p, k): v for p, fields in PRESETS.items() for k, v in file_fields(fields)}
    assert named, "no preset names a shipped file"
    for (p, k), v in named.items():
        assert resolve(v).is_file(), f"preset {p!r} field {k}={v!r}"


def test_run_commit_is_taken_once_and_not_at_import(monkeypatch):
    artifacts.run_commit.cache_clear()
    calls = []
    monkeypatch.setattr(artifacts, "git_commit", lambda: calls.append(1) or f"c{len(calls)}")
    assert artifacts.run_commit() == "c1"
    assert artifacts.manifest()["commit"] == "c1" and artifacts.run_commit() == "c1"  # the run's first answer
    assert len(calls) == 1
    artifacts.run_commit.cache_clear()
    assert not hasattr(artifacts, "RUN_COMMIT")


def test_results_live_outside_the_runtime_core():
    for name in ("TRACES", "QUANTIZATION_RESULTS", "POLICY_EVAL", "FORECAST_POLICY_EVAL", "ABLATIONS", "FRONT",
                 "FID_SEEDS", "GPU_RESULTS", "CIFAR10_ARCHIVE"):
        assert not hasattr(files, name), name
        assert getattr(artifacts, name).is_relative_to(artifacts.DATA), name
    assert artifacts.DATA == files.CHECKOUT_DATA
