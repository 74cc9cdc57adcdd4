"""Write book/api.md: one section per package of dqar_lib, one automodule per module (run after adding a module;
tests/test_layout.py fails while the page misses one)."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "dqar_lib"
ORDER = ("method", "models", "fitting", "evaluation", "publish")


def first_paragraph(path: Path) -> str:
    doc = ast.get_docstring(ast.parse(path.read_text())) or ""
    return " ".join(doc.strip().split("\n\n")[0].split()) if doc.strip() else ""


def page() -> str:
    out = ["# API reference", "",
           "Generated from `dqar_lib`'s docstrings when the book is built (`scripts/api_page.py` writes this page). "
           "The packages follow the one boundary that matters: `method` is what `apply_dqar` needs at run time "
           "and imports nothing else of the library; `models`, `fitting`, `evaluation` and `publish` sample, fit, "
           "measure and publish, each importing only the ones before it.", ""]
    top = [p for p in sorted(PKG.glob("*.py")) if p.name != "__init__.py"]
    for pkg in ORDER + ("",):
        if pkg:
            init = PKG / pkg / "__init__.py"
            out += [f"## `dqar_lib.{pkg}`", "", first_paragraph(init), ""]
            mods = sorted(p for p in (PKG / pkg).glob("*.py") if p.name != "__init__.py")
        else:
            out += ["## `dqar_lib` (top level)", "", first_paragraph(PKG / "__init__.py"), ""]
            mods = top
        for p in mods:
            name = ".".join(p.relative_to(ROOT).with_suffix("").parts)
            out += [f"### `{name}`", "", "```{eval-rst}", f".. automodule:: {name}", "   :members:", "```", ""]
    return "\n".join(out).rstrip() + "\n"


if __name__ == "__main__":
    (ROOT / "book" / "api.md").write_text(page())
