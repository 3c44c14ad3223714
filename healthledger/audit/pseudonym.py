"""The patient pseudonym an access-log entry carries: a keyed hash of the patient id, never the id itself."""

from __future__ import annotations

from healthledger.store.envelope import BlindIndexer

# The blind index the pseudonyms live in: its own HKDF-derived key (store.envelope.index_key), so a
# pseudonym never equals the patient's blind-index terms in the FHIR store.
PSEUDONYM_INDEX = ("AccessLog", "patient")


def patient_pseudonym(indexer: BlindIndexer, patient_id: str) -> str:
    """Hex HMAC of `patient_id` under the tenant's access-log index key; "" for no patient.

    Keyed, not a plain hash: patient ids are low-entropy (sequential numbers, MRNs, UUIDs a hospital
    system can list), so an unkeyed hash is reversed by hashing every candidate id (DESIGN.md: no hash
    of a low-entropy value without a secret). With the key, an auditor's or a thief's dump of the
    access log cannot be joined back to patients; the service, which holds the key, can still find a
    patient's entries by recomputing the pseudonym. (A store with privacy turned off for benchmarks
    has no key and gets an unkeyed hash: see BlindIndexer.)
    """
    if not patient_id:
        return ""
    resource_type, param = PSEUDONYM_INDEX
    return indexer.query_terms(resource_type, param, [patient_id])[0].hex()
