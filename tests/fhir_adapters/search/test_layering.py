"""The modules of fhir_adapters.search import each other in one order (no cycles), as its docstring lists them."""

from __future__ import annotations

import ast
from pathlib import Path

import fhir_adapters.search as package

ORDER = ["parameters", "dates", "references", "strings", "query", "values", "terms", "matching", "controls", "sorting"]
PACKAGE = "fhir_adapters.search"


def imported_siblings(module: str) -> set[str]:
    tree = ast.parse((Path(package.__file__).parent / f"{module}.py").read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(PACKAGE):
            names.add(node.module.removeprefix(PACKAGE).lstrip(".") or "(the package)")
        elif isinstance(node, ast.Import):
            names.update(a.name.removeprefix(PACKAGE).lstrip(".") for a in node.names if a.name.startswith(PACKAGE))
    return names


def test_every_module_is_listed() -> None:
    modules = {p.stem for p in Path(package.__file__).parent.glob("*.py")} - {"__init__"}
    assert modules == set(ORDER)


def test_modules_import_only_those_listed_before_them() -> None:
    for index, module in enumerate(ORDER):
        assert imported_siblings(module) <= set(ORDER[:index]), module


def test_the_docstring_lists_the_modules_in_that_order() -> None:
    doc = package.__doc__ or ""
    positions = [doc.index(f"\n  {module} ") for module in ORDER]
    assert positions == sorted(positions)
