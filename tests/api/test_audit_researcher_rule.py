"""The access log's researcher rule against an obviously correct model: a researcher sees exactly the entries
whose actor is them, about studies, cohorts or the log, and that name no patient; never one naming a patient,
never another actor's, never an attempt on a patient's kind of data. Pure (the
HTTP path is tested in tests/research/test_export.py and tests/integration/test_access_log_readers.py)."""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from healthledger.api.audit_events import (
    OWN_REQUESTS,
    RESEARCH_TYPES,
    _actor_spelling,
    _type_spelling,
    audit_access,
)
from healthledger.audit.entries import AccessEntry, encode_entry
from healthledger.auth.scopes import parse_scopes
from healthledger.principal import Principal

ACTORS = ("client:research", "client:rival", "user:rita", "ResearchStudy/s1", 'user:we"ird_%')
PSEUDONYMS = ("", "ab" * 32, "cd" * 32)

TYPES = ("Group", "ResearchStudy", "AuditEvent", "Patient", "Observation", "Groups")

entries = st.lists(st.builds(
    lambda actor, pseudonym, reason, rtype: AccessEntry(
        time=datetime(2026, 12, 1, tzinfo=UTC), actor=actor, organization="Organization/u", role="researcher",
        purpose="HRESCH", action="export", resource_type=rtype, resource_id="g", patient_pseudonym=pseudonym,
        decision="permit", reason=reason),
    st.sampled_from(ACTORS), st.sampled_from(PSEUDONYMS),
    st.sampled_from(("export:kick-off:j", "consent:x", '"resource_type":"Group",')), st.sampled_from(TYPES)),
    max_size=12)


def model_sees(actor: str, entry: AccessEntry) -> bool:
    """Their own entries about studies, cohorts and the log, naming no patient (a miss on a Patient names none,
    but a denial of a real one does: showing misses would say which patients exist)."""
    return entry.actor == actor and entry.patient_pseudonym == "" and entry.resource_type in (
        "Group", "ResearchStudy", "AuditEvent")


@given(entries, st.sampled_from(ACTORS[:3] + ACTORS[4:]))
def test_a_researcher_sees_exactly_their_own_requests_naming_no_patient(log: list[AccessEntry], actor: str) -> None:
    principal = Principal(actor, role="researcher", organization="Organization/u",
                          scopes=tuple(parse_scopes("system/*.rs")), registered_scopes=tuple(parse_scopes("system/*.rs")))
    access = audit_access(principal, "search", "Organization/home")
    assert access.allowed and access.sees == OWN_REQUESTS
    for entry in log:
        # The rule: the index column (no pseudonym), the body's spelling of the actor, then the body itself.
        body = encode_entry(entry).decode()
        by_rule = (entry.patient_pseudonym == "" and _actor_spelling(actor) in body
                   and any(_type_spelling(t) in body for t in RESEARCH_TYPES) and access.shows(entry))
        assert by_rule == model_sees(actor, entry)
        assert not (by_rule and entry.patient_pseudonym)


def test_other_roles_keep_their_rules() -> None:
    scopes = tuple(parse_scopes("system/*.rs"))
    assert audit_access(Principal("client:c", role="clinician", scopes=scopes), "search", "O/h").sees == "nothing"
    assert audit_access(Principal("", role="researcher", scopes=scopes), "search", "O/h").sees == "nothing"
    narrow = tuple(parse_scopes("system/Patient.rs"))
    assert not audit_access(Principal("client:r", role="researcher", scopes=narrow), "search", "O/h").allowed
