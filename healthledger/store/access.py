"""The one seam where authorisation and consent decide every store operation (read, search, write)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from healthledger.errors import Forbidden

Action = Literal["read", "vread", "history", "search", "create", "update", "delete"]


@dataclass(frozen=True)
class Principal:
    """Who is asking: an API client, a patient, a researcher, or the system itself (CLI, demo loader)."""

    id: str
    kind: str = "client"
    scopes: frozenset[str] = field(default_factory=frozenset)


SYSTEM = Principal("system", kind="system")
DEV_CLIENT = Principal("dev-client", kind="client")


class AccessPolicy(Protocol):
    """Decides whether `principal` may perform `action` on a resource of `resource_type`.

    `resource` is the decrypted resource when there is one (read, vread, update, create), else None
    (search, history, delete before loading). Returns None to permit; raises `Forbidden` to deny.
    The consent engine replaces the default policy; the store calls it on every operation and
    every bundle entry.

    A policy with `filters_search_results = True` is also asked `check(principal, "read", type,
    resource)` for every search match; denied matches are omitted from the page and the total.
    """

    filters_search_results: bool

    def check(self, principal: Principal, action: Action, resource_type: str, resource: dict[str, Any] | None) -> None: ...


class DevelopmentPolicy:
    """Permits the system and the development client; denies everyone else (fail closed)."""

    filters_search_results = False

    def __init__(self, allowed: frozenset[str] = frozenset({SYSTEM.id, DEV_CLIENT.id})) -> None:
        self._allowed = allowed

    def check(self, principal: Principal, action: Action, resource_type: str, resource: dict[str, Any] | None) -> None:
        if principal.id not in self._allowed:
            raise Forbidden(f"{action} on {resource_type} is not permitted for this client")
