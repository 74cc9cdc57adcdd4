"""The package layout's one rule: imports point one way, from the book's helpers down to the runtime core.

    method (the runtime core) < artifacts < models < fitting < evaluation < publish < dqar_lib (the public API,
    and the top-level commands such as dqar_lib.benchmark)

A module may import its own layer or a lower one, never a higher one, and the import graph has no cycle
(imports inside functions included: a lazy import hides a cycle, it does not remove it). A name with a leading
underscore is private to its module: no other module imports it.
"""

import ast
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "dqar_lib"
LAYERS = ("method", "artifacts", "models", "fitting", "evaluation", "publish", "")


def module_name(path: Path) -> str:
    parts = path.relative_to(PKG.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(mod: str) -> int:
    """The layer index of a module; a top-level module other than `artifacts` (the `python -m dqar_lib.benchmark`
    command) sits with the public API, and a package outside LAYERS has none (-1)."""
    parts = mod.split(".")
    name = parts[1] if len(parts) > 1 else ""
    if name in LAYERS:
        return LAYERS.index(name)
    return LAYERS.index("") if len(parts) == 2 and (PKG / f"{name}.py").is_file() else -1


def resolve(mod: str, is_pkg: bool, node: ast.ImportFrom) -> list[str]:
    """The dqar_lib modules an `import` / `from ... import` names (a name may be a submodule)."""
    if node.level:
        base = mod.split(".") if is_pkg else mod.split(".")[:-1]
        base = base[:len(base) - node.level + 1]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    out = [target] + [f"{target}.{a.name}" for a in node.names]
    return [m for m in out if m.startswith("dqar_lib")]


def import_graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in PKG.rglob("*.py")}
    graph = {}
    for mod, path in files.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                deps |= {m for m in resolve(mod, path.name == "__init__.py", node) if m in files}
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name in files}
        graph[mod] = deps - {mod}
    return graph


def test_every_module_has_a_layer():
    for mod in import_graph():
        assert layer(mod) >= 0, mod


def test_imports_never_point_up():
    upward = [f"{m} (layer {LAYERS[layer(m)] or 'api'}) imports {d} (layer {LAYERS[layer(d)] or 'api'})"
              for m, deps in import_graph().items() for d in deps
              if layer(d) > layer(m)]
    assert not upward, "imports that point up the layers:\n" + "\n".join(upward)


def test_the_runtime_core_imports_only_itself():
    outside = {m: sorted(d for d in deps if layer(d) != 0 and d != "dqar_lib.method")
               for m, deps in import_graph().items() if layer(m) == 0}
    assert not {m: d for m, d in outside.items() if d}


def test_no_import_cycle():
    graph, state, stack = import_graph(), {}, []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for d in sorted(graph[m]):
            if state.get(d) == "open":
                pytest.fail("import cycle: " + " -> ".join(stack[stack.index(d):] + [d]))
            if d not in state:
                visit(d)
        stack.pop()
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m)


def private_imports() -> list[str]:
    """`from M import _name` lines of dqar_lib where M is another dqar_lib module (or a package's `__init__`)."""
    files = {module_name(p): p for p in PKG.rglob("*.py")}
    found = []
    for mod, path in files.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ImportFrom):
                continue
            target = resolve(mod, path.name == "__init__.py", node)[0] if node.level else node.module or ""
            if not target.startswith("dqar_lib") or target == mod:
                continue
            found += [f"{path.relative_to(PKG.parent)}:{node.lineno}: from {target} import {a.name}"
                      for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
    return found


def test_no_module_imports_another_modules_private_name():
    private = private_imports()
    assert not private, "private names imported across modules (make them public or keep them home):\n" + \
        "\n".join(private)


def test_the_private_import_check_sees_relative_and_absolute_imports(tmp_path, monkeypatch):
    """The check itself: a relative and an absolute import of a private name are both caught, a public one is not."""
    pkg = tmp_path / "dqar_lib"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from .a import public\n")
    (pkg / "sub" / "a.py").write_text("def _hidden(): pass\ndef public(): pass\n")
    (pkg / "sub" / "b.py").write_text("from .a import _hidden, public\n")
    (pkg / "c.py").write_text("def f():\n    from dqar_lib.sub.a import _hidden\n")
    monkeypatch.setattr(sys.modules[__name__], "PKG", pkg)
    assert sorted(private_imports()) == ["dqar_lib/c.py:2: from dqar_lib.sub.a import _hidden",
                                         "dqar_lib/sub/b.py:1: from dqar_lib.sub.a import _hidden"]


def test_the_api_page_lists_every_module():
    """book/api.md is generated by scripts/api_page.py; a module added without regenerating it fails here."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("api_page", PKG.parent / "scripts" / "api_page.py")
    api_page = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(api_page)
    assert (PKG.parent / "book" / "api.md").read_text() == api_page.page(), "run: python scripts/api_page.py"
