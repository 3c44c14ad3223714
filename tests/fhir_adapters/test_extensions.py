"""Our extensions: one base URL, R4 types only, a valid R4 StructureDefinition for each, published by the API."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from fhir.resources.R4B.structuredefinition import StructureDefinition

from fhir_adapters.extensions import EXTENSION_BASE, EXTENSIONS, structure_definition

ROOT = Path(__file__).resolve().parents[2]
_OUR_URL = re.compile(r"https://healthledger\.[a-z]+/fhir/StructureDefinition/([a-z0-9-]+)"
                      r"|EXTENSION_BASE \+ \"([a-z0-9-]+)\"|extension_url\(\"([a-z0-9-]+)\"\)")


@pytest.mark.parametrize("extension_id", sorted(EXTENSIONS))
def test_each_extension_has_a_valid_r4_structure_definition(extension_id: str) -> None:
    definition = structure_definition(extension_id)
    StructureDefinition.model_validate(definition)
    assert definition["url"] == EXTENSION_BASE + extension_id and definition["fhirVersion"] == "4.0.1"
    types = {t["code"] for e in definition["differential"]["element"] for t in e.get("type", [])}
    assert "integer64" not in types  # R5 only


def test_one_base_url_and_every_extension_used_is_defined() -> None:
    """No second base (healthledger.example), and every extension URL in the code is one we publish."""
    used: set[str] = set()
    for folder in ("healthledger", "fhir_adapters"):
        for path in (ROOT / folder).rglob("*"):
            if path.suffix not in (".py", ".js", ".html") or "__pycache__" in path.parts:
                continue
            text = path.read_text(errors="replace")
            assert "healthledger.example" not in text, path
            assert "valueInteger64\"" not in text or path.name == "consents.py" or path.suffix == ".js", path
            used |= {name for match in _OUR_URL.findall(text) for name in match if name}
    assert used <= set(EXTENSIONS), used - set(EXTENSIONS)

