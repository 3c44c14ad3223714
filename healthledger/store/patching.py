"""PATCH (R4 http.html#patch) with JSON Patch: the current version, decided once as an update, patched, stored.

One decision and one access-log entry for the change (`UnitOfWork.for_operation`): a caller who may not read the
resource gets the same 404 as for a missing one, one who may read but not change it 403, and only then is
`If-Match` compared (a 412 would otherwise tell a caller that something exists). A patch that moves the resource
to another patient is decided on both sides, like any such update. A caller shown a redacted or de-identified
view may not patch: a `test` operation would reveal what its view leaves out.
"""

from __future__ import annotations

from typing import Any

from fhir_adapters import compartment as fhir_compartment
from fhir_adapters.patch import apply_json_patch
from healthledger.errors import Forbidden, PreconditionFailed
from healthledger.principal import Principal
from healthledger.store.own_definitions import refuse_own_url
from healthledger.store.repository import ResourceStore, StoredResource, fhir_errors


def patch_resource(
    store: ResourceStore, resource_type: str, resource_id: str, operations: Any, *, if_match: int | None,
    principal: Principal,
) -> StoredResource:
    with store.unit_of_work(principal) as uow:
        current = uow.for_operation(resource_type, resource_id)
        assert current.resource is not None
        if not principal.unrestricted and uow.present(current).resource != current.resource:
            raise Forbidden("PATCH needs the whole resource, and this caller is shown only part of it; use PUT")
        if if_match is not None and current.version_id != if_match:
            raise PreconditionFailed("version mismatch: the resource was changed by someone else (If-Match)")
        with fhir_errors():
            patched = apply_json_patch(current.resource, operations)
            before = fhir_compartment.patient_compartment(current.resource)
            after = fhir_compartment.patient_compartment(patched)
        refuse_own_url(uow, "update", patched)
        stored, _ = uow.update(resource_type, resource_id, patched, already_decided=before == after)
        return stored
