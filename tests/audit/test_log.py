"""Access log over a real database (SQLite and PostgreSQL): append, sequence, prove, detect tampering."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from itertools import pairwise

import pytest
from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from healthledger.audit.entries import AccessEntry, decode_entry, encode_entry
from healthledger.audit.log import (
    Anchor,
    checkpoint,
    integrate,
    prove_consistency,
    prove_inclusion,
    record_access,
    tree_head,
    verify_log,
)
from healthledger.audit.merkle import verify_consistency, verify_inclusion
from healthledger.audit.models import AccessLogEntry, AuditNode
from tests.audit import reference_merkle as ref

T0 = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def entry(i: int, decision: str = "permit") -> AccessEntry:
    return AccessEntry(
        time=T0 + timedelta(seconds=i), actor=f"client-{i % 3}", organization="org-1", role="clinician",
        purpose="TREAT", action="read", resource_type="Observation", resource_id=f"obs-{i}",
        patient_pseudonym="ab" * 16, decision=decision, reason="policy:treating-clinician",
    )


def fill(sessions, log_id: str, n: int, *, anchor_every: int = 0) -> tuple[list[int], list[Anchor]]:
    ids: list[int] = []
    anchors: list[Anchor] = []
    for i in range(n):
        with sessions.begin() as s:
            ids.append(record_access(s, entry(i), log_id=log_id))
        if anchor_every and (i + 1) % anchor_every == 0:
            with sessions.begin() as s:
                cp = checkpoint(s, T0, log_id=log_id)
                assert cp is not None
                anchors.append(Anchor(cp.size, cp.root, f"test#{len(anchors)}"))
    return ids, anchors


def test_encoding_round_trips_and_is_canonical() -> None:
    e = entry(7, "deny")
    body = encode_entry(e)
    assert decode_entry(body) == e
    assert encode_entry(decode_entry(body)) == body
    with pytest.raises(ValueError):
        AccessEntry(**{**e.__dict__, "time": datetime(2026, 1, 1)})  # naive time
    with pytest.raises(ValueError):
        AccessEntry(**{**e.__dict__, "decision": "maybe"})


def test_rolled_back_access_leaves_no_entry(sessions, log_id) -> None:
    with pytest.raises(RuntimeError), sessions.begin() as s:
        record_access(s, entry(1), log_id=log_id)
        raise RuntimeError("decision failed after logging")
    with sessions.begin() as s:
        assert integrate(s, T0, log_id=log_id).size == 0


def test_inclusion_and_consistency_proofs_verify(sessions, log_id) -> None:
    ids, anchors = fill(sessions, log_id, 37, anchor_every=10)
    with sessions.begin() as s:
        head = integrate(s, T0, log_id=log_id)
        assert head.size == 37
        for eid in (ids[0], ids[9], ids[36]):
            p = prove_inclusion(s, eid, log_id=log_id)
            verify_inclusion(p.leaf_index, p.tree_size, p.leaf_hash, p.path, head.root)
        # An entry proven against an older anchored head too.
        p = prove_inclusion(s, ids[3], tree_size=anchors[0].size, log_id=log_id)
        verify_inclusion(p.leaf_index, p.tree_size, p.leaf_hash, p.path, anchors[0].root)
        for a, b in pairwise(anchors):
            verify_consistency(a.size, b.size, prove_consistency(s, a.size, b.size, log_id=log_id), a.root, b.root)
        report = verify_log(s, anchors, log_id=log_id)
        assert report.ok and report.entries_checked == 37 and report.anchors_checked == 3


def test_sequencing_is_incremental(sessions, log_id) -> None:
    fill(sessions, log_id, 5)
    with sessions.begin() as s:
        first = integrate(s, T0, log_id=log_id)
    fill(sessions, log_id, 6)
    with sessions.begin() as s:
        second = integrate(s, T0, log_id=log_id)
        assert (first.size, second.size) == (5, 11)
        verify_consistency(5, 11, prove_consistency(s, 5, 11, log_id=log_id), first.root, second.root)
        assert tree_head(s, log_id=log_id) == second


def _tamper_then_verify(sessions, log_id, tamper) -> object:
    ids, anchors = fill(sessions, log_id, 24, anchor_every=8)
    with sessions.begin() as s:
        tamper(s, ids)
    with sessions.begin() as s:
        return verify_log(s, anchors, log_id=log_id)


def test_detects_altered_entry(sessions, log_id) -> None:
    def alter(s: Session, ids: list[int]) -> None:
        forged = encode_entry(entry(10, "permit")).replace(b"obs-10", b"obs-99")
        s.execute(update(AccessLogEntry).where(AccessLogEntry.id == ids[10]).values(body=forged))

    report = _tamper_then_verify(sessions, log_id, alter)
    assert not report.ok and report.problem.kind == "altered"
    assert report.problem.leaf_index == 10 and report.problem.entry_id is not None
    assert report.problem.anchor is not None and report.problem.anchor.size == 16


def test_detects_deleted_entry(sessions, log_id) -> None:
    report = _tamper_then_verify(
        sessions, log_id, lambda s, ids: s.execute(delete(AccessLogEntry).where(AccessLogEntry.id == ids[5]))
    )
    assert not report.ok and report.problem.kind == "missing" and report.problem.leaf_index == 5


def test_detects_reordered_entries(sessions, log_id) -> None:
    def swap(s: Session, ids: list[int]) -> None:
        a, b = s.get(AccessLogEntry, ids[2]), s.get(AccessLogEntry, ids[3])
        a.body, b.body = b.body, a.body

    report = _tamper_then_verify(sessions, log_id, swap)
    assert not report.ok and report.problem.kind == "reordered" and report.problem.leaf_index == 2


def test_detects_truncation(sessions, log_id) -> None:
    def truncate(s: Session, ids: list[int]) -> None:
        s.execute(delete(AccessLogEntry).where(AccessLogEntry.id.in_(ids[20:])))

    report = _tamper_then_verify(sessions, log_id, truncate)
    assert not report.ok and report.problem.kind == "truncated" and report.problem.leaf_index == 20


def test_detects_alteration_even_when_stored_nodes_are_rewritten(sessions, log_id) -> None:
    """An attacker who also rewrites the stored leaf node is still caught by the anchor."""

    def alter_both(s: Session, ids: list[int]) -> None:
        row = s.get(AccessLogEntry, ids[12])
        row.body = row.body.replace(b'"permit"', b'"deny"')
        from healthledger.audit.entries import entry_leaf_hash

        s.execute(
            update(AuditNode)
            .where(AuditNode.log_id == log_id, AuditNode.level == 0, AuditNode.idx == 12)
            .values(hash=entry_leaf_hash(row.body))
        )

    report = _tamper_then_verify(sessions, log_id, alter_both)
    assert not report.ok and report.problem.anchor is not None and report.problem.anchor.size == 16
    assert report.problem.leaf_index == 8  # the first leaf after the last intact anchor


def test_unanchored_local_tampering_is_still_reported(sessions, log_id) -> None:
    ids, _ = fill(sessions, log_id, 6)
    with sessions.begin() as s:
        integrate(s, T0, log_id=log_id)
        s.execute(update(AccessLogEntry).where(AccessLogEntry.id == ids[4]).values(body=b"{}"))
    with sessions.begin() as s:
        report = verify_log(s, [], log_id=log_id)
        assert not report.ok and report.problem.kind == "altered" and report.problem.leaf_index == 4


def test_record_access_on_a_core_connection(sessions, log_id) -> None:
    """The store works on Core connections: an entry written there commits with its transaction."""
    engine = sessions.kw["bind"]
    with engine.begin() as conn:
        first = record_access(conn, entry(1), log_id=log_id)
        second = record_access(conn, entry(2), log_id=log_id)
    assert second > first
    with sessions.begin() as s:
        assert integrate(s, T0, log_id=log_id).size == 2


@pytest.mark.parametrize("batch", [1, 3, 8, 250])
def test_sequencing_in_batches_builds_the_reference_tree(sessions, log_id, batch) -> None:
    """Batches of any size (each rebuilding the frontier from stored nodes), with another log's entries between
    this one's rows: leaves in row order, and at every batch the root of the recursive RFC 6962 reference."""
    other = log_id + "x"
    for i in range(23):
        with sessions.begin() as s:
            record_access(s, entry(i), log_id=log_id)
            if i % 4 == 0:
                record_access(s, entry(100 + i), log_id=other)
    bodies: list[bytes] = []
    with sessions.begin() as s:
        bodies = list(s.scalars(select(AccessLogEntry.body).where(AccessLogEntry.log_id == log_id)
                                .order_by(AccessLogEntry.id)))
    size = 0
    while size < len(bodies):
        with sessions.begin() as s:
            head = integrate(s, T0, log_id=log_id, limit=batch)
        assert head.size == min(size + batch, len(bodies))
        assert head.root == ref.mth(bodies[: head.size])
        size = head.size
    with sessions.begin() as s:
        rows = s.execute(select(AccessLogEntry.leaf_index).where(AccessLogEntry.log_id == log_id)
                         .order_by(AccessLogEntry.id)).scalars().all()
        assert rows == list(range(len(bodies)))
        assert tree_head(s, log_id=other).size == 0  # the other log is left alone


def test_an_entry_the_session_holds_sees_its_leaf_index(sessions, log_id) -> None:
    ids, _ = fill(sessions, log_id, 3)
    with sessions.begin() as s:
        held = s.get(AccessLogEntry, ids[1])
        assert held is not None and held.leaf_index is None
        integrate(s, T0, log_id=log_id)
        assert held.leaf_index == 1
        assert prove_inclusion(s, ids[1], log_id=log_id).leaf_index == 1
