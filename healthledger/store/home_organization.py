"""The hospital's own Organization: made by `healthledger init` (or the first `serve`), the home organisation.

The home organisation is a care organisation of every patient in the store (`ConsentIndex`), so its
treating clients and staff read under the consent engine's care default, and its auditors read the whole
access log. `HEALTHLEDGER_HOME_ORGANIZATION` names it explicitly; when that is empty, the Organization
made here is it. It has a fixed id and carries the identifier below, so an imported Organization that
happens to reuse the id is not mistaken for it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import sqlalchemy.exc

from healthledger.errors import Conflict, Gone, NotFound

if TYPE_CHECKING:
    from healthledger.store.repository import ResourceStore

HOME_ORGANIZATION_ID = "home"
HOME_ORGANIZATION_REF = f"Organization/{HOME_ORGANIZATION_ID}"
DEFAULT_NAME = "HealthLedger Hospital"
# Our one extension/identifier base (https://healthledger.dev/fhir/...): marks the Organization made here.
HOME_IDENTIFIER_SYSTEM = "https://healthledger.dev/fhir/NamingSystem/home-organization"


def home_organization_resource(name: str) -> dict[str, Any]:
    return {
        "resourceType": "Organization",
        "id": HOME_ORGANIZATION_ID,
        "identifier": [{"system": HOME_IDENTIFIER_SYSTEM, "value": HOME_ORGANIZATION_ID}],
        "active": True,
        "type": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/organization-type", "code": "prov",
                              "display": "Healthcare Provider"}]}],
        "name": name,
    }


def _is_ours(resource: dict[str, Any] | None) -> bool:
    return resource is not None and any(
        isinstance(i, dict) and i.get("system") == HOME_IDENTIFIER_SYSTEM for i in resource.get("identifier") or []
    )


def ensure_home_organization(store: ResourceStore, name: str | None = None) -> tuple[str, str, bool]:
    """Make the home Organization if it is not stored yet, or rename it when `name` is given and differs.

    Returns (reference, name, made or renamed). Runs as the service itself (no access decision, nothing
    logged: it is setup, not an access). Refuses to take over an Organization with the same id that was
    not made here.
    """
    with store.unit_of_work() as uow:
        try:
            current = uow.read("Organization", HOME_ORGANIZATION_ID).resource
        except (NotFound, Gone):
            current = None
        if current is not None and not _is_ours(current):
            raise Conflict(f"{HOME_ORGANIZATION_REF} exists but was not made by `healthledger init`: set "
                           "HEALTHLEDGER_HOME_ORGANIZATION to the hospital's Organization instead")
        if current is not None and (name is None or current.get("name") == name):
            return HOME_ORGANIZATION_REF, str(current.get("name", "")), False
        wanted = name or DEFAULT_NAME
        resource = {**(current or {}), **home_organization_resource(wanted)}
        resource.pop("meta", None)
        uow.update("Organization", HOME_ORGANIZATION_ID, resource)
    return HOME_ORGANIZATION_REF, wanted, True


def stored_home_organization(store: ResourceStore) -> str:
    """`Organization/home` when the Organization made by `init` is stored, else "" (nothing made yet)."""
    with store.service_view() as uow:
        found = uow.peek("Organization", HOME_ORGANIZATION_ID)
    return HOME_ORGANIZATION_REF if found is not None and _is_ours(found.resource) else ""


def effective_home_organization(configured: str, store: ResourceStore) -> str:
    """The home organisation: the configured one (HEALTHLEDGER_HOME_ORGANIZATION), else the one `init` made."""
    if configured:
        return configured
    try:
        return stored_home_organization(store)
    except sqlalchemy.exc.DBAPIError:
        return ""  # a database without the schema yet (bootstrap not run): nothing made
