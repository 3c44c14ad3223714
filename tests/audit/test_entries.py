"""The canonical encoding of access-log entries: the fast encoder writes the bytes of the version-1 reference
(json.dumps and strftime, as stored leaves and the browser verifier have them) for any entry."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta, timezone

from hypothesis import given, settings
from hypothesis import strategies as st

from healthledger.actions import LOGGED_ACTIONS
from healthledger.audit.entries import (
    DECISIONS,
    ENCODING_VERSION,
    AccessEntry,
    decode_entry,
    encode_entry,
)


def reference_encode_entry(entry: AccessEntry) -> bytes:
    """Version 1 as first written: the model the fast encoder must equal byte for byte."""
    fields = {
        "time": entry.time.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "actor": entry.actor, "organization": entry.organization, "role": entry.role, "purpose": entry.purpose,
        "action": entry.action, "resource_type": entry.resource_type, "resource_id": entry.resource_id,
        "patient_pseudonym": entry.patient_pseudonym, "decision": entry.decision, "reason": entry.reason,
        "break_glass": entry.break_glass, "sealed_note": base64.b64encode(entry.sealed_note).decode(),
        "v": ENCODING_VERSION,
    }
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


# Text as it may reach the log: plain identifiers mostly; then ASCII with its edges (quotes, backslashes, control
# characters, DEL), which the fast path writes; then anything (non-ASCII, astral characters, lone surrogates),
# which json writes. One non-ASCII field sends a whole entry to json, so ASCII entries are drawn on their own too.
PLAIN = st.from_regex(r"[A-Za-z0-9/._:-]{0,40}", fullmatch=True)
_ASCII_EDGES = st.sampled_from(['"', "\\", "\x00", "\x1f", "\n", "\t", "\x7f", "/", " "])
ASCII = st.one_of(
    PLAIN,
    st.lists(st.one_of(st.characters(max_codepoint=0x7F), _ASCII_EDGES), max_size=12).map("".join),
)
ANY = st.one_of(
    ASCII,
    st.lists(st.one_of(st.characters(), st.sampled_from(["\x80", "é", "\u2028", "😀", "\ud800"])), max_size=12).map("".join),
    st.text(),
)
ZONES = st.one_of(
    st.just(UTC),
    st.just(timezone(timedelta(0))),
    st.integers(-14 * 60, 14 * 60).map(lambda minutes: timezone(timedelta(minutes=minutes))),
)
TIMES = st.datetimes(min_value=datetime(2, 1, 1), max_value=datetime(9998, 12, 31), timezones=ZONES)


@st.composite
def entries(draw: st.DrawFn, text: st.SearchStrategy[str] = ANY) -> AccessEntry:
    return AccessEntry(
        time=draw(TIMES), actor=draw(text), organization=draw(text), role=draw(text), purpose=draw(text),
        action=draw(st.sampled_from(sorted(LOGGED_ACTIONS))), resource_type=draw(text), resource_id=draw(text),
        patient_pseudonym=draw(text), decision=draw(st.sampled_from(sorted(DECISIONS))), reason=draw(text),
        break_glass=draw(st.booleans()), sealed_note=draw(st.binary(max_size=40)),
    )


@settings(max_examples=500, deadline=None)
@given(entries(text=ASCII))
def test_the_encoding_of_ascii_entries_equals_the_version_1_reference(entry: AccessEntry) -> None:
    assert encode_entry(entry) == reference_encode_entry(entry)


@settings(max_examples=300, deadline=None)
@given(entries())
def test_the_encoding_of_any_entry_equals_the_version_1_reference(entry: AccessEntry) -> None:
    assert encode_entry(entry) == reference_encode_entry(entry)


@given(entries())
def test_an_encoded_entry_decodes_to_the_same_moment_and_fields(entry: AccessEntry) -> None:
    try:
        decoded = decode_entry(encode_entry(entry))
    except ValueError:  # strptime reads back only 4-digit years: those below 1000 are the reference's too
        assert entry.time.astimezone(UTC).year < 1000
        return
    assert decoded == AccessEntry(**{**entry.__dict__, "time": entry.time.astimezone(UTC)})


def test_a_typical_entry_is_byte_identical_to_a_stored_leaf() -> None:
    """A leaf as version 1 stored it (written out here): sorted keys, no spaces, UTC with microseconds."""
    entry = AccessEntry(
        time=datetime(2026, 3, 1, 9, 30, 0, tzinfo=timezone(timedelta(hours=1))), actor="client-7",
        organization="Organization/h1", role="system", purpose="TREAT", action="read", resource_type="Patient",
        resource_id="p1", patient_pseudonym="ab" * 4, decision="permit", reason='say "hi"\\', sealed_note=b"\x00",
    )
    assert encode_entry(entry) == (
        b'{"action":"read","actor":"client-7","break_glass":false,"decision":"permit","organization":"Organization/h1",'
        b'"patient_pseudonym":"abababab","purpose":"TREAT","reason":"say \\"hi\\"\\\\","resource_id":"p1",'
        b'"resource_type":"Patient","role":"system","sealed_note":"AA==","time":"2026-03-01T08:30:00.000000Z","v":1}'
    )
