"""Test support importable by name from any test module (`from support import ...`).

Test modules must not import `conftest`: several folders have one, and which one a bare
`import conftest` finds depends on collection order.
"""

from __future__ import annotations

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
