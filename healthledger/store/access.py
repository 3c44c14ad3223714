"""The one seam where authorisation and consent decide every store operation (read, search, write).

This seam is the security boundary: the store never discloses or writes a resource without asking its
AccessPolicy, and `AccessPolicy` below lists everything the store calls on it. The store calls it on every
operation and every bundle entry, inside the operation's database transaction (`conn`), so a policy can
write its access-log entry in the same transaction as its decision. The consent engine's policy is
`healthledger.consent.enforcement.ConsentPolicy`; `DevelopmentPolicy` here serves bare stores (CLI, unit
tests) and is the base for test doubles.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy.engine import Connection

from healthledger.actions import Action
from healthledger.errors import Forbidden
from healthledger.principal import SYSTEM, Principal

__all__ = [
    "DEV_CLIENT",
    "SYSTEM",
    "AccessPolicy",
    "Action",
    "DevelopmentPolicy",
    "Principal",
    "Screened",
]

# The development bearer token's principal: unrestricted like the service itself, but an API caller,
# so its accesses are logged. Disable it in production (HEALTHLEDGER_DEV_TOKEN="").
DEV_CLIENT = Principal("dev-client", role="internal", via="api")


@dataclass(frozen=True, slots=True)
class Screened:
    """One search or history match after its decision: `resource` is what may be shown (None: withheld).

    `verdict` is the policy's own record of the decision (the consent engine's Outcome), handed back to
    it in `record_results`; the store never looks inside.
    """

    resource_type: str
    resource_id: str
    patient_id: str
    resource: dict[str, Any] | None
    verdict: Any = None


class AccessPolicy(Protocol):
    """Decides whether `principal` may perform `action` on a resource, and records every attempt.

    Per operation the store calls, in order:
    - `begin(conn, defer=...)` once, at the start (a policy reads its freshness state here);
    - `check_scope(...)` before it looks at anything (scopes first: a refusal says nothing of any resource);
    - `check(...)` for each single-resource decision: returns the resource to hand back (possibly
      transformed by an obligation, e.g. de-identified) or raises Forbidden (a write, or scopes) or
      NotFound (a read whose resource must look missing). `resource` is the decrypted resource when there
      is one; None for type-level checks (search, history) and for writes of nothing;
    - `record_miss(...)` for an attempt on something that is not there (missing, deleted, erased);
    - for searches and histories, when `filters_search_results`: `screen(...)` about every match, without
      recording (withheld matches are left out of pages and totals as if they did not exist), then
      `record_results(...)` once with what was disclosed, withheld, and counted in the total but not shown;
      a search whose criteria pin its patients asks `withheld_patient(...)` about each first: when the caller
      may see none of any of theirs, nothing is screened (the withheld entries are recorded, the page empty);
    - `rescue(conn)` when the operation fails (or, with `defer`, when it ends): the entries recorded so
      far, which the store then keeps with `keep(conn, entries)` in a transaction of their own, or, for a
      deferred read, with `keep_durably(entries)`: committed (grouped with other reads' entries) before
      the read returns, raising if they could not be.
    """

    filters_search_results: bool
    records_accesses: bool

    def begin(self, conn: Connection, *, defer: bool = False) -> None: ...

    def rescue(self, conn: Connection) -> list[Any]: ...

    def keep(self, conn: Connection, entries: list[Any]) -> None: ...

    def keep_durably(self, entries: list[Any], conn: Connection) -> None: ...

    def check_scope(self, principal: Principal, action: Action, resource_type: str, *, conn: Connection) -> None:
        """Raises Forbidden (and records the refusal) when the caller's scopes do not allow `action` on the
        type at all; otherwise nothing. The store asks this first, before it looks at any resource."""
        ...

    def check(
        self,
        principal: Principal,
        action: Action,
        resource_type: str,
        resource: dict[str, Any] | None,
        *,
        resource_id: str = "",
        conn: Connection,
    ) -> dict[str, Any] | None: ...

    def screen(
        self,
        principal: Principal,
        action: Action,
        resource_type: str,
        resource: dict[str, Any],
        *,
        conn: Connection,
    ) -> Screened: ...

    def withheld_patient(
        self, principal: Principal, resource_type: str, patient_id: str, *, conn: Connection
    ) -> Screened | None: ...

    def record_results(
        self,
        principal: Principal,
        action: Action,
        resource_type: str,
        disclosed: Sequence[Screened],
        withheld: Sequence[Screened],
        *,
        counted: Sequence[Screened] = (),
        conn: Connection,
    ) -> None: ...

    def record_miss(
        self, principal: Principal, action: Action, resource_type: str, resource_id: str, *, conn: Connection
    ) -> None: ...


class DevelopmentPolicy:
    """Permits unrestricted principals (the service itself, the development token); denies everyone else.

    Records nothing. Test doubles subclass it and override what they observe.
    """

    filters_search_results = False
    records_accesses = False

    def begin(self, conn: Connection, *, defer: bool = False) -> None:
        return None

    def rescue(self, conn: Connection) -> list[Any]:
        return []

    def keep(self, conn: Connection, entries: list[Any]) -> None:
        return None

    def keep_durably(self, entries: list[Any], conn: Connection) -> None:
        return None

    def check_scope(self, principal: Principal, action: Action, resource_type: str, *, conn: Connection) -> None:
        return None  # no scopes here: `check` decides

    def check(
        self,
        principal: Principal,
        action: Action,
        resource_type: str,
        resource: dict[str, Any] | None,
        *,
        resource_id: str = "",
        conn: Connection,
    ) -> dict[str, Any] | None:
        if not principal.unrestricted:
            raise Forbidden(f"{action} on {resource_type} is not permitted for this client")
        return resource

    def screen(
        self,
        principal: Principal,
        action: Action,
        resource_type: str,
        resource: dict[str, Any],
        *,
        conn: Connection,
    ) -> Screened:
        shown = resource if principal.unrestricted else None
        return Screened(resource_type, str(resource.get("id", "")), "", shown)

    def withheld_patient(
        self, principal: Principal, resource_type: str, patient_id: str, *, conn: Connection
    ) -> Screened | None:
        return None  # each match is screened

    def record_results(
        self,
        principal: Principal,
        action: Action,
        resource_type: str,
        disclosed: Sequence[Screened],
        withheld: Sequence[Screened],
        *,
        counted: Sequence[Screened] = (),
        conn: Connection,
    ) -> None:
        return None

    def record_miss(
        self, principal: Principal, action: Action, resource_type: str, resource_id: str, *, conn: Connection
    ) -> None:
        return None
