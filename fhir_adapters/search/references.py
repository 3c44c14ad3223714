"""References as search reads them (R4 search.html#reference): `Type/id`, a bare id, or a URL."""

from __future__ import annotations

import re
from dataclasses import dataclass

from fhir_adapters.datatypes import is_id
from fhir_adapters.validation import is_resource_type


@dataclass(frozen=True)
class ReferenceValue:
    """`Type/id` (type may be None for a bare id), or `url` for a reference that is not a FHIR resource URL."""

    type: str | None
    id: str | None
    url: str | None = None


_REF = re.compile(
    r"^(?:(?P<base>.*)/)?(?P<type>[A-Z][A-Za-z]+)/(?P<id>[A-Za-z0-9\-.]{1,64})(?:/_history/[^/]+)?$"
)


def parse_reference(reference: str) -> ReferenceValue:
    """`Patient/1`, `http://x/fhir/Patient/1/_history/2` -> (Patient, 1); a bare id -> (None, id); else url."""
    match = _REF.match(reference)
    if match is not None and is_resource_type(match["type"]):
        return ReferenceValue(match["type"], match["id"])
    if is_id(reference):
        return ReferenceValue(None, reference)
    return ReferenceValue(None, None, reference)
