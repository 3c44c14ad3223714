"""Test support importable by name from any test module (`from support import ...`).

Test modules must not import `conftest`: several folders have one, and which one a bare
`import conftest` finds depends on collection order.
"""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT.parent / "shared" / "fixtures"
NODE_BIN = ROOT / "node_modules" / ".bin"


def node_tool(name: str) -> Path:
    """A pinned npm tool from node_modules/.bin; fails (not skips) when missing: `make test` installs them."""
    path = NODE_BIN / name
    if not path.exists() or shutil.which("node") is None:
        pytest.fail(f"{name} missing: run `make test` (it runs `npm ci`)")
    return path


def imported_modules(path: Path) -> set[str]:
    """Every module a source file imports, anywhere in it (function-local imports too), as dotted names;
    `from a import b` counts as both `a` and `a.b`, relative imports are resolved against the file."""
    package = ".".join(path.resolve().relative_to(ROOT).with_suffix("").parts[:-1])
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names
