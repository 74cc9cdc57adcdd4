"""Every notebook: valid as stored (unique cell ids), a papermill smoke run, and a bad parameter that stops it early."""

import json
from pathlib import Path

import nbformat
import papermill as pm
import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("[0-9][0-9]_*.ipynb"))
each_notebook = pytest.mark.parametrize("nb", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])


def test_there_are_notebooks():
    assert NOTEBOOKS, "no notebooks found under notebooks/"


@each_notebook
def test_notebook_is_valid_with_unique_cell_ids(nb):
    raw = json.loads(nb.read_text())  # nbformat.read would fill in missing ids
    ids = [c.get("id") for c in raw["cells"]]
    assert None not in ids and len(set(ids)) == len(ids), f"{nb.name}: cell ids missing or repeated: {ids}"
    nbformat.validate(nbformat.from_dict(raw))


@each_notebook
def test_notebook_smoke(nb, tmp_path):
    pm.execute_notebook(str(nb), str(tmp_path / nb.name), parameters={"profile": "smoke"}, cwd=str(nb.parent),
                        progress_bar=False, kernel_name="python3")


@each_notebook
def test_bad_profile_stops_early(nb, tmp_path):
    out = tmp_path / nb.name
    with pytest.raises(pm.PapermillExecutionError, match="profile='fast' is invalid"):
        pm.execute_notebook(str(nb), str(out), parameters={"profile": "fast"}, cwd=str(nb.parent),
                            progress_bar=False, kernel_name="python3")


@each_notebook
def test_unknown_parameter_is_refused(nb, tmp_path):
    """papermill only warns on a parameter the notebook does not declare; the notebook refuses it, naming it."""
    with pytest.raises(pm.PapermillExecutionError, match=r"unknown notebook parameter stepz: .*profile"):
        pm.execute_notebook(str(nb), str(tmp_path / nb.name), parameters={"profile": "smoke", "stepz": 10},
                            cwd=str(nb.parent), progress_bar=False, kernel_name="python3")
