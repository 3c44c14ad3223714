"""The one seam where authorisation and consent decide every store operation (read, search, write).

The store calls its AccessPolicy on every operation and every bundle entry, inside the operation's
database transaction (`conn`), so a policy can write its access-log entry in the same transaction as
its decision. The consent engine's policy is `healthledger.consent.enforcement.ConsentPolicy`; the
default here serves bare stores (CLI, unit tests).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, Protocol

from sqlalchemy.engine import Connection

from healthledger.errors import Forbidden
from healthledger.principal import SYSTEM, Principal

__all__ = ["DEV_CLIENT", "SYSTEM", "AccessPolicy", "Action", "DevelopmentPolicy", "Principal"]

Action = Literal["read", "vread", "history", "search", "create", "update", "delete"]

# The development bearer token's principal: unrestricted like the service itself, but an API caller,
# so its accesses are logged. Disable it in production (HEALTHLEDGER_DEV_TOKEN="").
DEV_CLIENT = Principal("dev-client", role="internal", via="api")


class AccessPolicy(Protocol):
    """Decides whether `principal` may perform `action` on a resource of `resource_type`.

    `check` decides one operation and records it: it returns the resource to hand back (possibly
    transformed by an obligation, e.g. de-identified) or raises (Forbidden, or NotFound where
    admitting the resource exists would leak). `resource` is the decrypted resource when there is one.

    A policy with `filters_search_results = True` decides searches and histories per resource:
    `screen` is asked, without recording, about every match (denied ones are left out of pages and
    totals as if they did not exist), then `record_results` records what was disclosed and withheld.
    """

    filters_search_results: bool

    def check(
        self,
        principal: Principal,
        action: Action,
        resource_type: str,
        resource: dict[str, Any] | None,
        *,
        resource_id: str = "",
        conn: Connection | None = None,
    ) -> dict[str, Any] | None: ...

    def screen(
        self, principal: Principal, action: Action, resource_type: str, resource: dict[str, Any], *, conn: Connection
    ) -> dict[str, Any] | None: ...

    def record_results(
        self,
        principal: Principal,
        action: Action,
        resource_type: str,
        disclosed: Sequence[dict[str, Any]],
        withheld: Sequence[dict[str, Any]],
        *,
        conn: Connection,
    ) -> None: ...


class DevelopmentPolicy:
    """Permits unrestricted principals (the service itself, the development token); denies everyone else."""

    filters_search_results = False

    def check(
        self,
        principal: Principal,
        action: Action,
        resource_type: str,
        resource: dict[str, Any] | None,
        *,
        resource_id: str = "",
        conn: Connection | None = None,
    ) -> dict[str, Any] | None:
        if not principal.unrestricted:
            raise Forbidden(f"{action} on {resource_type} is not permitted for this client")
        return resource

    def screen(
        self, principal: Principal, action: Action, resource_type: str, resource: dict[str, Any], *, conn: Connection
    ) -> dict[str, Any] | None:
        return resource if principal.unrestricted else None

    def record_results(self, *args: Any, **kwargs: Any) -> None:
        return None
