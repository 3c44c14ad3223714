"""The shape of the code, checked: the direction of imports between packages, and no import cycles.

Read from the source with `ast` (not regexes), including imports inside functions: an upward import
deferred into a function is still an upward dependency. docs/architecture.md explains the layers.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("healthledger", "fhir_adapters", "zk")

# The layers below the consent engine and the HTTP shell never import those (docs/architecture.md).
LOWER = ("healthledger.store", "healthledger.ledger", "healthledger.audit", "healthledger.auth")
UPPER = ("healthledger.consent", "healthledger.api", "healthledger.web", "healthledger.app", "healthledger.cli",
         "healthledger.federation")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if "migrations" not in path.parts:
                found[module_name(path)] = path
    return found


def imports_of(name: str, path: Path, known: set[str]) -> Iterator[tuple[str, int, str]]:
    """(imported module, line, kind) for every import of a project module in `path`; kind is "module"
    (at import time), "deferred" (inside a function) or "typing" (under `if TYPE_CHECKING:`)."""
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    top_level = {id(node) for node in tree.body}
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                if _type_checking_only(tree, node):
                    kind = "typing"
                else:
                    kind = "module" if id(node) in top_level else "deferred"
                yield target, node.lineno, kind
        # (a `from x import y` names x itself too; duplicates are harmless)


def _type_checking_only(tree: ast.Module, node: ast.AST) -> bool:
    for stmt in tree.body:
        if (
            isinstance(stmt, ast.If)
            and "TYPE_CHECKING" in ast.unparse(stmt.test)
            and any(node is child for child in ast.walk(stmt))
        ):
            return True
    return False


MODULES = modules()
KNOWN = set(MODULES)
GRAPH = {name: list(imports_of(name, path, KNOWN)) for name, path in MODULES.items()}


def _in(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def test_lower_layers_never_import_the_upper_ones() -> None:
    violations = sorted({
        f"{name}:{line} imports {target}"
        for name, edges in GRAPH.items()
        if _in(name, LOWER)
        for target, line, _ in edges
        if _in(target, UPPER)
    })
    assert violations == []


@pytest.mark.parametrize("package", ["fhir_adapters", "zk"])
def test_pure_packages_never_import_the_service(package: str) -> None:
    violations = sorted({
        f"{name}:{line} imports {target}"
        for name, edges in GRAPH.items()
        if _in(name, (package,))
        for target, line, _ in edges
        if _in(target, ("healthledger",)) or (package == "zk" and _in(target, ("fhir_adapters",)))
    })
    assert violations == []


def test_no_import_cycles() -> None:
    """No cycle among modules, counting every import (deferred ones too), TYPE_CHECKING ones aside."""
    edges = {name: {t for t, _, kind in targets if kind != "typing"} for name, targets in GRAPH.items()}
    cycles = _cycles(edges)
    assert cycles == [], "\n".join(" -> ".join(c) for c in cycles[:20])


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each as a cycle found in it."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    import sys

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found
