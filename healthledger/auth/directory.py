"""Display names of the actors in the access log: a client's registered name, a person's display name (sealed
like their username), an organisation's `Organization.name`. The log itself holds only ids.

Names change rarely and are read on every AuditEvent page, so each worker remembers them for a minute.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from sqlalchemy.orm import Session, sessionmaker

from healthledger.auth.models import ApiClient, User
from healthledger.auth.users import AccountNames
from healthledger.errors import HealthLedgerError
from healthledger.ledger.members import member_by_id, member_name
from healthledger.principal import SYSTEM
from healthledger.store.repository import ResourceStore

TTL_SECONDS = 60.0
MAX_NAMES = 4096


class ActorDirectory:
    """`actor("client:abc")` -> "Lab system"; `organization("Organization/h1")` -> "General Hospital"; "" when
    there is no name to give."""

    def __init__(
        self, sessions: sessionmaker[Session], names: AccountNames, store: ResourceStore,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._sessions = sessions
        self._names = names
        self._store = store
        self._clock = clock
        self._cache: dict[str, tuple[float, str]] = {}
        self._lock = threading.Lock()

    def actor(self, actor_id: str) -> str:
        return self._remembered(actor_id, self._actor)

    def organization(self, reference: str) -> str:
        return self._remembered(reference, self._organization)

    def _remembered(self, key: str, look_up: Callable[[str], str]) -> str:
        now = self._clock()
        with self._lock:
            hit = self._cache.get(key)
        if hit is not None and now - hit[0] < TTL_SECONDS:
            return hit[1]
        name = look_up(key)
        with self._lock:
            if len(self._cache) >= MAX_NAMES:
                self._cache.clear()
            self._cache[key] = (now, name)
        return name

    def _actor(self, actor_id: str) -> str:
        if actor_id.startswith("ResearchStudy/"):  # a study's export (healthledger/research/export.py)
            return self._titled(actor_id)
        kind, _, ident = actor_id.partition(":")
        if not ident:
            return ""
        with self._sessions() as session:
            if kind == "client":
                client = session.get(ApiClient, ident)
                return client.name if client is not None else ""
            if kind == "user":
                user = session.get(User, ident)
                return self._names.display_name(session, user) if user is not None else ""
            if kind == "member":  # another member hospital's user: "Practitioner/7 at Hospital B"
                org, _, user_ref = ident.partition("/")
                member = member_by_id(session, org)
                return f"{user_ref} at {member.name}" if member is not None and user_ref else ""
        return ""

    def _titled(self, reference: str) -> str:
        """A study as its title says ("" when it is not there any more)."""
        rtype, _, rid = reference.partition("/")
        try:
            stored = self._store.read(rtype, rid, principal=SYSTEM)
        except HealthLedgerError:
            return ""
        title = (stored.resource or {}).get("title")
        return f"Research study: {title.strip()}" if isinstance(title, str) and title.strip() else "A research study"

    def _organization(self, reference: str) -> str:
        rtype, _, rid = reference.partition("/")
        if rtype != "Organization" or not rid:
            return ""
        try:
            # Shared data, outside every patient's compartment; the service's own read is not an access.
            stored = self._store.read("Organization", rid, principal=SYSTEM)
        except HealthLedgerError:
            with self._sessions() as session:  # another member hospital, named as in the consortium directory
                return member_name(session, reference)
        name = (stored.resource or {}).get("name")
        return name.strip() if isinstance(name, str) else ""
