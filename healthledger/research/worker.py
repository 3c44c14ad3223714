"""The research side of the ledger worker (`healthledger relay work`): each pass settles published studies
(active once StudyRegistry confirmed them); every `reissue_every` seconds, under the `research-credentials`
lease (one replica at a time), patients whose records changed get their credentials re-issued."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from sqlalchemy.orm import Session, sessionmaker

from healthledger import leases
from healthledger.research.credentials import CredentialIssuer, IssueReport, changed_since, utc
from healthledger.research.studies import Studies
from healthledger.store.repository import ResourceStore
from zk.merkle import PairHasher

REISSUE_LEASE = "research-credentials"
DEFAULT_REISSUE_SECONDS = 300.0


@contextmanager
def bulk_pair_hasher() -> Iterator[PairHasher | None]:
    """The pair hasher for large issuing runs: circomlibjs in Node when it is installed (a few times faster),
    else None (zk.merkle's Python reference). Small batches are hashed in Python either way."""
    from zk.bulk_poseidon import NodePairHasher
    from zk.errors import ProverError

    try:
        hasher = NodePairHasher()
    except (ProverError, OSError):
        yield None
        return
    with hasher:
        yield hasher


@dataclass
class ResearchPass:
    """What one pass did."""

    settled: int = 0
    reissue: IssueReport | None = None


class ResearchWorker:
    def __init__(self, store: ResourceStore, sessions: sessionmaker[Session], *, owner: str,
                 reissue_every: float = DEFAULT_REISSUE_SECONDS, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.sessions = sessions
        self.owner = owner
        self.reissue_every = reissue_every
        self.clock = clock
        self.studies = Studies(store, clock=clock)
        self.issuer = CredentialIssuer(store, clock=clock)
        self._next_reissue = 0.0
        self._last_reissue: float | None = None  # first pass: every activated patient (fingerprints decide)

    def run_once(self) -> ResearchPass:
        done = ResearchPass(settled=self.studies.settle())
        now = self.clock()
        if now < self._next_reissue:
            return done
        held = leases.acquire(self.sessions, REISSUE_LEASE, self.owner, now=now, ttl=max(60.0, self.reissue_every))
        if held is None:
            return done  # another replica re-issues
        try:
            done.reissue = self.reissue_changed(since=self._last_reissue)
            self._last_reissue = now
            self._next_reissue = now + self.reissue_every
        finally:
            leases.release(self.sessions, held)
        return done

    def reissue_changed(self, *, since: float | None) -> IssueReport:
        """Re-issue the activated patients with records written after `since` (all of them when None)."""
        with self.store.engine.begin() as conn:
            activated = list(self.issuer.activated(conn))
            if since is not None:
                activated = changed_since(conn, self.store, utc(since - 1.0), activated)
            if not activated:
                return IssueReport()
            return self.issuer.issue(conn, activated)
