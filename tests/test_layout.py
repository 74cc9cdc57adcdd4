"""The package layout's one rule: imports point one way, from the book's helpers down to the runtime core.

    method (the runtime core) < artifacts < models < fitting < evaluation < publish < dqar_lib (the public API)

A module may import its own layer or a lower one, never a higher one, and the import graph has no cycle
(imports inside functions included: a lazy import hides a cycle, it does not remove it).
"""

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "dqar_lib"
LAYERS = ("method", "artifacts", "models", "fitting", "evaluation", "publish", "")


def module_name(path: Path) -> str:
    parts = path.relative_to(PKG.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(mod: str) -> int:
    parts = mod.split(".")
    return LAYERS.index(parts[1] if len(parts) > 1 else "")


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
