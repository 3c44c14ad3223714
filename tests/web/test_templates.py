"""The web app's pages are Jinja templates shipped with the package, never strings in the code."""

from __future__ import annotations

import ast
import tomllib
from fnmatch import fnmatch
from importlib.resources import files

from support import ROOT

import healthledger.web

TEMPLATES = {
    "base.html", "login.html", "home.html", "notice.html", "patient_home.html", "account.html", "signup.html",
    "recover.html", "recovery_code.html", "records.html", "consents.html", "consent.html", "requests.html",
    "share.html", "history.html", "notices.html", "authorize.html", "apps.html",
    "research_studies.html", "research_new.html", "research_study.html", "research_export.html", "research_activity.html",
    "studies.html", "study.html",
}
PARTIALS = {"_forms.html", "_consent.html", "_study.html"}  # macros the pages import; they render nothing themselves
STATIC = {"app.css", "favicon.svg", "js/merkle.js", "js/verify.js", "js/consent-progress.js", "js/prover.js",
          "js/prove-worker.js", "js/export-progress.js", "js/study-join.js",
          "js/poseidon.js", "js/eligibility.js"}


def test_templates_are_package_resources() -> None:
    folder = files(healthledger.web) / "templates"
    assert {entry.name for entry in folder.iterdir() if entry.name.endswith(".html")} == TEMPLATES | PARTIALS
    for name in TEMPLATES - {"base.html"}:
        assert (folder / name).read_text().startswith('{% extends "base.html" %}')
    for name in PARTIALS:
        assert "{% macro" in (folder / name).read_text() and "{% extends" not in (folder / name).read_text()
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
    for name in TEMPLATES | PARTIALS:
        assert any(fnmatch(name, pattern) for pattern in patterns), name
    assert any(fnmatch("healthledger.web.static.js", pattern) for pattern in find["include"])
    for name in STATIC:
        assert any(fnmatch(name.rpartition("/")[2], pattern) for pattern in data.get("*", [])), name


def test_static_files_are_package_resources() -> None:
    folder = files(healthledger.web) / "static"
    for name in STATIC:
        assert (folder / name).is_file(), name


def test_no_inline_templates_in_the_web_package() -> None:
    for module in (ROOT / "healthledger" / "web").glob("*.py"):
        for node in ast.walk(ast.parse(module.read_text())):
            if isinstance(node, ast.Name | ast.Attribute):
                name = node.id if isinstance(node, ast.Name) else node.attr
                assert name != "render_template_string", f"{module.name} renders a template from a string"
