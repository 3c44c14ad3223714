"""Names of the people, organisations and studies a page mentions, read through the /fhir API as the signed-in
person (shared resources: Organization, Practitioner, ResearchStudy), remembered for the rest of the request."""

from __future__ import annotations

from collections.abc import Iterable

from flask import g
from sqlalchemy.orm import Session, sessionmaker

from fhir_adapters.readable.text import display_of
from healthledger.ledger.members import member_name
from healthledger.web.fhir_client import FhirCallError, FhirClient

_CACHE = "_healthledger_web_names"
NAMED_TYPES = frozenset({"Organization", "Practitioner", "PractitionerRole", "ResearchStudy", "Patient"})


def names_for(
    api: FhirClient, references: Iterable[str], sessions: sessionmaker[Session] | None = None
) -> dict[str, str]:
    """reference -> display name, for each `Type/id` of a named type this person may read, and (with `sessions`)
    each member hospital of the consortium as its directory names it (others are left out: the page falls back
    to "an organisation", "a clinician")."""
    cache: dict[str, str] = g.setdefault(_CACHE, {})
    out: dict[str, str] = {}
    for reference in dict.fromkeys(references):
        if reference not in cache:
            rtype, _, rid = reference.partition("/")
            name = ""
            if rtype in NAMED_TYPES and rid:
                try:
                    name = display_of(api.read(rtype, rid))
                except FhirCallError:
                    name = ""
            if not name and sessions is not None and rtype == "Organization" and rid:
                with sessions() as session:
                    name = member_name(session, reference)
            cache[reference] = name
        if cache[reference]:
            out[reference] = cache[reference]
    return out
