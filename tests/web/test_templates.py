"""The web app's pages are Jinja templates shipped with the package, never strings in the code."""

from __future__ import annotations

import ast
import tomllib
from fnmatch import fnmatch
from importlib.resources import files

from support import ROOT

import healthledger.web

TEMPLATES = {"base.html", "login.html", "home.html", "notice.html"}


def test_templates_are_package_resources() -> None:
    folder = files(healthledger.web) / "templates"
    assert {entry.name for entry in folder.iterdir() if entry.name.endswith(".html")} == TEMPLATES
    for name in TEMPLATES - {"base.html"}:
        assert (folder / name).read_text().startswith('{% extends "base.html" %}')
    assert "{{ csrf_meta_tag() }}" in (folder / "base.html").read_text()


def test_a_built_package_ships_the_templates() -> None:
    """What `pip install .` builds: setuptools finds web/templates as a (namespace) package under the
    `include` globs, and its files match the package-data patterns."""
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    find = setuptools["packages"]["find"]
    assert find.get("namespaces", True), "a folder without __init__.py is only found as a namespace package"
    assert any(fnmatch("healthledger.web.templates", pattern) for pattern in find["include"])
    data = setuptools["package-data"]
    patterns = [*data.get("*", []), *data.get("healthledger.web.templates", [])]
    for name in TEMPLATES:
        assert any(fnmatch(name, pattern) for pattern in patterns), name


def test_no_inline_templates_in_the_web_package() -> None:
    for module in (ROOT / "healthledger" / "web").glob("*.py"):
        for node in ast.walk(ast.parse(module.read_text())):
            if isinstance(node, ast.Name | ast.Attribute):
                name = node.id if isinstance(node, ast.Name) else node.attr
                assert name != "render_template_string", f"{module.name} renders a template from a string"
