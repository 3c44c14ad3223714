"""The write check for definitions (OperationDefinition, StructureDefinition): none stored under our canonical URLs."""

from __future__ import annotations

from typing import Any

from fhir_adapters import definition_search
from healthledger.actions import Action
from healthledger.store.repository import UnitOfWork, fhir_errors


def refuse_own_url(uow: UnitOfWork, action: Action, resource: Any) -> None:
    """Refuse (422 business-rule) to write a definition whose `url` is one of this server's own canonical URLs
    (`definition_search.check_not_own_url`); anything else passes. Every write of a resource body goes through here
    (REST create, update and conditional update, PATCH's result, batch and transaction entries), scopes first as in
    the store's own writes, so a caller without the scope is told that and nothing about the body."""
    resource_type = resource.get("resourceType") if isinstance(resource, dict) else None
    if resource_type not in definition_search.PUBLISHED_TYPES:
        return
    uow.check_scope(action, resource_type)
    with fhir_errors():
        definition_search.check_not_own_url(resource)
