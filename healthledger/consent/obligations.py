"""Carrying out the consent engine's obligations on a resource before it is returned.

- `redact-security-labels`: elements carrying one of the labels (DS4P inline labels) are removed.
- `de-identify` (research purposes): HIPAA Safe Harbor de-identification (fhir_adapters.deidentify),
  with references and ids replaced by pseudonyms keyed per recipient, so one researcher sees the same
  pseudonym for the same patient every time and two researchers cannot link their data sets.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fhir_adapters.deidentify import deidentify, redact_labelled
from fhir_adapters.errors import FhirInputError
from healthledger.consent.engine import Obligation
from healthledger.principal import Principal
from healthledger.store.repository import ResourceStore

PSEUDONYM_TYPE = "Deidentified"  # blind-index key family: one key per recipient (the param)
_PSEUDONYMS_KEPT = 200_000  # remembered (key, reference) -> pseudonym; an export repeats each reference often


class Obligations:
    """The ConsentPolicy's `obligations` callable, over the store's keyed blind indexer."""

    def __init__(self, store: ResourceStore) -> None:
        self.store = store
        self._pseudonyms: dict[tuple[bytes | None, str], str] = {}

    def __call__(self, resource: dict[str, Any], obligation: Obligation, principal: Principal) -> dict[str, Any] | None:
        """The resource as it may be shown, or None when nothing of it may (its root carries the label)."""
        if obligation.kind == "redact-security-labels":
            try:
                return redact_labelled(resource, obligation.labels)
            except FhirInputError:
                return None
        if obligation.kind == "de-identify":
            indexer = self.store.indexer
            key = indexer.key(PSEUDONYM_TYPE, principal.actor_id)

            kept = self._pseudonyms

            def pseudonym(reference: str) -> str:
                # A keyed hash, remembered under its key (a rotated key is a new entry): the same Patient
                # and Encounter references recur in every resource of a participant.
                found = kept.get((key, reference))
                if found is None:
                    if len(kept) >= _PSEUDONYMS_KEPT:
                        kept.clear()
                    found = kept[(key, reference)] = indexer.term(key, reference).hex()
                return found

            return deidentify(resource, pseudonym=pseudonym, now_year=datetime.now(UTC).year)
        raise ValueError(f"unknown obligation {obligation.kind!r}")
