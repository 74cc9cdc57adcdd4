"""Helpers for the notebooks' first cells: parameter checks that stop a bad papermill run early."""

from __future__ import annotations

import ast

from ..artifacts import run_commit
from ..models.sampling import SCHEDULERS

PROFILES = ("smoke", "full")
POSITIVE_INTS = ("steps", "num_steps", "pipe_steps", "batch", "depth", "per_class", "repeats")
OPEN_FRACTIONS = ("target_reuse", "cheap_quantile")  # numbers strictly inside (0, 1)
GRID_SIZES = ("n_tau", "n_snr")  # slider grid sizes: integers from 2 to 12


def check_parameters(**params) -> None:
    """Validate the usual notebook parameters; a bad value raises a ValueError that names the parameter.

    Known names: profile, steps/num_steps/pipe_steps, batch, depth, per_class, repeats, seed(s), scheduler, tau, alpha,
    guidance_scale, target_reuse, cheap_quantile, n_tau, n_snr, budgets, fit.
    Under papermill it first refuses a parameter the notebook does not declare (`refuse_unknown_parameters`).
    A notebook's run starts here: this takes the commit its results will name (`artifacts.run_commit`).
    """
    refuse_unknown_parameters()
    run_commit()
    for name, v in params.items():
        if name == "profile" and v not in PROFILES:
            raise ValueError(f"parameter profile={v!r} is invalid: expected one of {PROFILES}")
        if name in POSITIVE_INTS and not (isinstance(v, int) and v > 0):
            raise ValueError(f"parameter {name}={v!r} is invalid: expected a positive integer")
        if name == "seed" and not (isinstance(v, int) and v >= 0):
            raise ValueError(f"parameter seed={v!r} is invalid: expected a non-negative integer")
        ok_list = isinstance(v, (list, tuple)) and len(v) > 0 and all(isinstance(s, int) and s >= 0 for s in v)
        if name == "seeds" and not ok_list:
            raise ValueError(f"parameter seeds={v!r} is invalid: expected a non-empty list of non-negative integers "
                             "(with papermill: -y 'seeds: [0, 1]')")
        if name == "scheduler" and v not in SCHEDULERS:
            raise ValueError(f"parameter scheduler={v!r} is invalid: expected one of {SCHEDULERS}")
        if name in ("tau", "alpha") and not (isinstance(v, (int, float)) and 0.0 <= v <= 1.0):
            raise ValueError(f"parameter {name}={v!r} is invalid: expected a number in [0, 1]")
        if name in OPEN_FRACTIONS and not (isinstance(v, (int, float)) and 0.0 < v < 1.0):
            raise ValueError(f"parameter {name}={v!r} is invalid: expected a number in (0, 1)")
        if name in GRID_SIZES and not (isinstance(v, int) and 2 <= v <= 12):
            raise ValueError(f"parameter {name}={v!r} is invalid: expected an integer from 2 to 12")
        if name == "guidance_scale" and not (isinstance(v, (int, float)) and v >= 1.0):
            raise ValueError(f"parameter guidance_scale={v!r} is invalid: expected a number >= 1")
        if name == "fit" and not (isinstance(v, (list, tuple)) and set(v) <= {"attn", "forecast"}):
            raise ValueError(f"parameter fit={v!r} is invalid: expected a list drawn from ['attn', 'forecast'] "
                             "(with papermill: -y 'fit: [forecast]')")
        if name == "budgets" and not (isinstance(v, (list, tuple)) and v and all(
                isinstance(b, (int, float)) and 0.0 <= b < 1.0 for b in v)):
            raise ValueError(f"parameter budgets={v!r} is invalid: expected a non-empty list of fractions in [0, 1) "
                             "(with papermill: -y 'plan_budgets: [0.5, 0.6]')")


def _assigned(source: str) -> list[str]:
    """The names a cell assigns at top level, in order (a cell that does not parse assigns none)."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return []
    return [t.id for node in tree.body if isinstance(node, (ast.Assign, ast.AnnAssign))
            for t in (node.targets if isinstance(node, ast.Assign) else [node.target]) if isinstance(t, ast.Name)]


def unknown_parameters(history: list[str]) -> tuple[list[str], list[str]]:
    """(injected names the parameters cell does not declare, the declared names), from a kernel's input history.

    papermill runs the notebook's `parameters` cell, then its injected cell, whose source starts with
    "# Parameters"; `history` is the kernel's `In` list. Without an injected cell both lists are empty.
    """
    for i in range(len(history) - 1, 0, -1):
        if history[i].lstrip().startswith("# Parameters"):
            declared = _assigned(history[i - 1])
            return [n for n in _assigned(history[i]) if n not in declared], declared
    return [], []


def refuse_unknown_parameters() -> None:
    """Raise if papermill injected a parameter the notebook does not declare (`-p stepz 10`), naming it and the
    known ones: papermill itself only logs a warning and runs on the defaults. Outside a kernel it does nothing."""
    try:
        from IPython import get_ipython
    except ImportError:
        return
    shell = get_ipython()
    if shell is None:
        return
    unknown, declared = unknown_parameters(list(shell.user_ns.get("In", [])))
    if unknown:
        raise ValueError(f"unknown notebook parameter{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}: "
                         f"this notebook's parameters are {', '.join(declared)}")


def glue(name: str, value, display: bool = False) -> None:
    """myst_nb.glue for numbers in prose: numpy and torch scalars become plain Python numbers first.

    (numpy 2 writes np.float64(0.5) as its text form, which MyST cannot format with `:.2f`.)
    """
    from myst_nb import glue as _glue

    _glue(name, value.item() if hasattr(value, "item") else value, display=display)
