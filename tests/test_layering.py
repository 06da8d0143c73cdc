"""The import layering of docs/architecture.md holds: every import inside foedus points to a
lower layer, so no two packages depend on each other, however the import is written (at the top
of a module, inside a function, or for type checking only)."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "foedus"

#: lowest first; a unit is a subpackage or a top-level module of foedus (``foedus`` itself is
#: the package's ``__init__``). Keep in step with docs/architecture.md, "Import layering".
LAYERS: list[set[str]] = [
    {"core"},
    {"codec", "compress", "security", "privacy", "aggregate", "data"},
    {"transport", "models"},
    {"roles", "trees", "vertical"},
    {"mlops"},
    {"config"},
    {"topology"},
    {"plugins", "certs"},
    {"runner"},
    {"federation", "report", "sim", "testing"},
    {"cli", "foedus"},
]
LEVEL = {unit: i for i, layer in enumerate(LAYERS) for unit in layer}


def unit_of_module(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "foedus"


def unit_of_path(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return "foedus" if parts == ("__init__",) else parts[0]


def imports(path: Path) -> list[tuple[int, str]]:
    """Every foedus module ``path`` imports, with the line, wherever the import statement is."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        found += [(node.lineno, n) for n in names if n == "foedus" or n.startswith("foedus.")]
    return found


def test_every_unit_of_the_package_has_a_layer() -> None:
    units = {unit_of_path(p) for p in SRC.rglob("*.py")}
    assert units == set(LEVEL), "add new packages to LAYERS and to docs/architecture.md"


def test_every_import_points_to_a_lower_layer() -> None:
    upward = []
    for path in sorted(SRC.rglob("*.py")):
        here = unit_of_path(path)
        for line, module in imports(path):
            there = unit_of_module(module)
            if there != here and LEVEL[there] >= LEVEL[here]:
                upward.append(f"{path.relative_to(SRC)}:{line} imports {module} "
                              f"({here} is layer {LEVEL[here]}, {there} layer {LEVEL[there]})")
    assert not upward, "\n".join(upward)


def test_the_layering_in_the_docs_is_this_one() -> None:
    text = (SRC.parents[1] / "docs" / "architecture.md").read_text()
    for i, layer in enumerate(LAYERS):
        line = f"{i}. " + ", ".join(f"`{u}`" for u in sorted(layer))
        assert line in text, f"docs/architecture.md should list layer {line!r}"
