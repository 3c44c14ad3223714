"""SMART on FHIR scopes (App Launch 2.0 §Scopes and Launch Context): parse, grant, check. Pure.

Resource scopes are `{patient|user|system}/{ResourceType|*}.{permissions}` where permissions are
SMART v2 letters in order `c r u d s`, or SMART v1 `read` (= rs), `write` (= cud) and `*` (= cruds).
Granular v2 scopes with a query (`patient/Observation.rs?category=laboratory`) are recognised but
not granted: the server grants only what it enforces, and OAuth 2.0 (RFC 6749 §3.3) lets it say so.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from healthledger.errors import BadRequest

CONTEXTS = ("patient", "user", "system")
V2_ORDER = "cruds"
_V1 = {"read": "rs", "write": "cud", "*": "cruds"}
_RESOURCE_SCOPE = re.compile(r"^(patient|user|system)/(\*|[A-Z][A-Za-z]{1,63})\.([a-z*]+)(\?.*)?$")
# Non-resource scopes a client may ask for; granted as they are (they carry no data access).
OTHER_SCOPES = frozenset({"openid", "fhirUser", "launch", "launch/patient", "offline_access", "online_access"})

# Our actions -> the SMART v2 permission they need.
INTERACTION_PERMISSION: Mapping[str, str] = {  # keys: healthledger.actions.ACTIONS (tests/test_actions.py)
    "create": "c", "read": "r", "vread": "r", "history": "r", "update": "u", "delete": "d", "search": "s",
    "export": "r",
}


class InvalidScope(BadRequest):
    code = "invalid"


@dataclass(frozen=True, slots=True, order=True)
class ResourceScope:
    context: str  # patient | user | system
    resource_type: str  # a FHIR type or "*"
    permissions: str  # subset of "cruds", in that order

    def __str__(self) -> str:
        return f"{self.context}/{self.resource_type}.{self.permissions}"

    def allows(self, context: str, resource_type: str, permission: str) -> bool:
        return (
            self.context == context
            and self.resource_type in ("*", resource_type)
            and permission in self.permissions
        )


def _canonical_permissions(perms: str) -> str:
    if perms in _V1:
        return _V1[perms]
    if not perms or any(p not in V2_ORDER for p in perms) or len(set(perms)) != len(perms):
        raise InvalidScope("scope permissions must be SMART v2 letters c, r, u, d, s (or v1 read, write, *)")
    if "".join(sorted(perms, key=V2_ORDER.index)) != perms:
        raise InvalidScope("SMART v2 scope permissions must appear in the order c r u d s")
    return perms


def parse_scope(token: str) -> ResourceScope | str | None:
    """A resource scope, a recognised non-resource scope (as str), or None for a granular v2 scope."""
    if token in OTHER_SCOPES:
        return token
    m = _RESOURCE_SCOPE.match(token)
    if not m:
        raise InvalidScope("unrecognised scope (expected e.g. system/Observation.rs)")
    context, rtype, perms, query = m.groups()
    perms = _canonical_permissions(perms)
    if query:
        return None
    return ResourceScope(context, rtype, perms)


def parse_scopes(scope_string: str) -> list[ResourceScope | str]:
    """Space-separated scopes (RFC 6749 §3.3). Granular scopes are dropped; malformed ones raise."""
    out: list[ResourceScope | str] = []
    for token in scope_string.split():
        parsed = parse_scope(token)
        if parsed is not None:
            out.append(parsed)
    return out


@functools.lru_cache(maxsize=1024)
def registered_scopes(scope_string: str) -> tuple[ResourceScope | str, ...]:
    """`parse_scopes` of a client's registered scopes, remembered: they are read on every request of its tokens
    (the string is the client's own row, which a change replaces, so a cached parse is never stale)."""
    return tuple(parse_scopes(scope_string))


def _intersect(a: ResourceScope, b: ResourceScope) -> ResourceScope | None:
    if a.context != b.context:
        return None
    if a.resource_type == "*":
        rtype = b.resource_type
    elif b.resource_type in ("*", a.resource_type):
        rtype = a.resource_type
    else:
        return None
    perms = "".join(p for p in V2_ORDER if p in a.permissions and p in b.permissions)
    return ResourceScope(a.context, rtype, perms) if perms else None


def grant_scopes(requested: str, registered: str) -> list[ResourceScope | str]:
    """What a client gets: each requested scope intersected with the scopes it was registered for.

    Raises InvalidScope if nothing at all can be granted (RFC 6749 §5.2 `invalid_scope`).
    """
    allowed = parse_scopes(registered)
    granted: set[ResourceScope | str] = set()
    for want in parse_scopes(requested):
        if isinstance(want, str):
            if want in allowed:
                granted.add(want)
            continue
        for have in allowed:
            if isinstance(have, ResourceScope) and (g := _intersect(want, have)) is not None:
                granted.add(g)
    if not granted:
        raise InvalidScope("none of the requested scopes is allowed for this client")
    return sorted(granted, key=str)


def format_scopes(scopes: Iterable[ResourceScope | str]) -> str:
    return " ".join(str(s) for s in scopes)


def scope_allows(scopes: Iterable[ResourceScope | str], context: str, resource_type: str, interaction: str) -> bool:
    """Does any granted scope allow `interaction` on `resource_type` in `context`?"""
    permission = INTERACTION_PERMISSION.get(interaction)
    if permission is None:
        return False
    return any(isinstance(s, ResourceScope) and s.allows(context, resource_type, permission) for s in scopes)
