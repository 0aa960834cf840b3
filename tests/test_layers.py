"""The floors of docs/DESIGN.md ("Layers"): no module of the bundle package imports from a floor above its own."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# the table of docs/DESIGN.md, "Layers"
FLOORS = {
    "files": 0,
    "provenance": 0,
    "data": 1,
    "networks": 2,
    "losses": 2,
    "datasets": 2,
    "engines": 3,
    "explain": 3,
    "handlers": 4,
    "config_check": 5,
    "report": 5,
}


def part_of(module: str) -> str:
    """bundle.data.readers -> data; bundle.files -> files."""
    return module.split(".")[1]


def bundle_imports(path: Path, root: Path) -> list[tuple[int, str]]:
    """(line, absolute module) of each import of the bundle package in ``path``, relative imports resolved."""
    package = list(path.relative_to(root).with_suffix("").parts[:-1])
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            whole_package = node.module is None or module == "bundle"  # from bundle import report; from .. import files
            names = [f"{module}.{alias.name}" for alias in node.names] if whole_package else [module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        found += [(node.lineno, name) for name in names if name.startswith("bundle.")]
    return found


def upward_imports(root: Path) -> list[str]:
    problems = []
    for path in sorted((root / "bundle").rglob("*.py")):
        relative = path.relative_to(root)
        if relative.name == "__init__.py" and len(relative.parts) == 2:
            continue  # bundle/__init__.py
        own = part_of(".".join(relative.with_suffix("").parts))
        for line, module in bundle_imports(path, root):
            other = part_of(module)
            if other not in FLOORS or own not in FLOORS:
                problems.append(f"{relative}:{line}: {module}: a part of the package that DESIGN.md does not place")
            elif FLOORS[other] > FLOORS[own]:
                problems.append(
                    f"{relative}:{line}: {own} (floor {FLOORS[own]}) imports {module} (floor {FLOORS[other]})"
                )
    return problems


def test_no_module_imports_from_a_floor_above_its_own():
    assert upward_imports(ROOT) == []


def test_every_part_of_the_package_is_placed_and_an_upward_import_is_caught(tmp_path):
    parts = {p.stem if p.is_file() else p.name for p in (ROOT / "bundle").iterdir() if not p.name.startswith("__")}
    assert parts == set(FLOORS)
    design = (ROOT / "docs" / "DESIGN.md").read_text()
    for part, floor in FLOORS.items():
        assert f"| {floor} | `bundle/{part}" in design or f"`bundle/{part}.py`" in design, part
    # a data module that imports a handler (the dependency that once ran back up the layers) is caught
    (tmp_path / "bundle" / "data").mkdir(parents=True)
    (tmp_path / "bundle" / "data" / "bad.py").write_text("from ..handlers.writers import SaliencyWriter\n")
    assert upward_imports(tmp_path) == [
        "bundle/data/bad.py:1: data (floor 1) imports bundle.handlers.writers (floor 4)"
    ]


@pytest.mark.parametrize("source", ["import bundle.report\n", "from bundle import report\n"])
def test_both_import_forms_are_read(tmp_path, source):
    (tmp_path / "bundle").mkdir()
    (tmp_path / "bundle" / "files.py").write_text(source)
    assert len(upward_imports(tmp_path)) == 1
