"""Pure recipes of the store: AAD layout is injective, blind-index keys are separated per parameter."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from healthledger import crypto
from healthledger.store import envelope

part = st.text(max_size=12)


@settings(max_examples=300, deadline=None)
@given(st.tuples(part, part, part, st.integers(1, 10**6)), st.tuples(part, part, part, st.integers(1, 10**6)))
def test_resource_aad_is_injective(a: tuple[str, str, str, int], b: tuple[str, str, str, int]) -> None:
    # Separators inside a tenant or id cannot make two different rows share an AAD.
    assert (envelope.resource_aad(*a) == envelope.resource_aad(*b)) == (a == b)


def test_aad_binds_each_field() -> None:
    base = envelope.resource_aad("t", "Patient", "1", 1)
    assert len({base, envelope.resource_aad("u", "Patient", "1", 1), envelope.resource_aad("t", "Observation", "1", 1),
                envelope.resource_aad("t", "Patient", "2", 1), envelope.resource_aad("t", "Patient", "1", 2)}) == 5
    assert envelope.resource_aad("t|x", "P", "1", 1) != envelope.resource_aad("t", "x|P", "1", 1)


def test_blind_terms_are_keyed_truncated_and_separated() -> None:
    master = crypto.new_key()
    indexer = envelope.BlindIndexer(master, "tenant-a")
    term = indexer.query_terms("Patient", "family", ["p:smith"])[0]
    assert len(term) == envelope.BLIND_TERM_BYTES and b"smith" not in term
    assert indexer.query_terms("Patient", "family", ["p:smith"])[0] == term  # deterministic: searchable
    assert indexer.query_terms("Patient", "given", ["p:smith"])[0] != term  # one key per parameter
    assert indexer.query_terms("Practitioner", "family", ["p:smith"])[0] != term  # and per type
    assert envelope.BlindIndexer(master, "tenant-b").query_terms("Patient", "family", ["p:smith"])[0] != term
    assert envelope.BlindIndexer(crypto.new_key(), "tenant-a").query_terms("Patient", "family", ["p:smith"])[0] != term
    assert sorted(indexer.terms("Patient", {"family": {"p:smith", "e:smith"}})) == sorted(
        [("family", t) for t in indexer.query_terms("Patient", "family", ["p:smith", "e:smith"])]
    )


def test_compartment_index_hides_the_patient_id() -> None:
    key = envelope.compartment_key(crypto.new_key(), "tenant")
    index = envelope.compartment_index(key, "patient-123")
    assert len(index) == 16 and b"patient-123" not in index
    assert index == envelope.compartment_index(key, "patient-123") != envelope.compartment_index(key, "patient-124")


def test_wrap_context_binds_tenant_and_key_id() -> None:
    assert envelope.wrap_context("t", "dk-1") != envelope.wrap_context("t", "dk-2")
    assert envelope.wrap_context("t", "dk-1") != envelope.wrap_context("u", "dk-1")
