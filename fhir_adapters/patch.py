"""JSON Patch (RFC 6902) on a FHIR resource (R4 http.html#patch, `application/json-patch+json`).

The patch is applied by `jsonpatch` to a copy, without the arrays and objects it left empty (removing the last
`name` removes the element); the result is then validated like any update. A patch may not
change what the URL names (`resourceType`, `id`), and every failure (a malformed operation, a path that does not
exist, a failed `test`) is an `UnprocessablePatch` (422, RFC 5789 §2.2) whose message names the operation by
index and kind, never the values in it.
"""

from __future__ import annotations

import copy
from typing import Any, Final

import jsonpatch
import jsonpointer

from fhir_adapters.errors import FhirInputError

MAX_OPERATIONS: Final = 1000
_OPS: Final = frozenset({"add", "remove", "replace", "move", "copy", "test"})


class UnprocessablePatch(FhirInputError):
    """The patch is well-formed JSON but cannot be applied to this resource."""

    status = 422
    code = "processing"


def apply_json_patch(resource: dict[str, Any], operations: Any) -> dict[str, Any]:
    """`resource` with `operations` applied (a new dict; `resource` is not changed)."""
    if not isinstance(operations, list) or not operations:
        raise UnprocessablePatch("a JSON Patch is a non-empty array of operations (RFC 6902 §3)")
    if len(operations) > MAX_OPERATIONS:
        raise UnprocessablePatch(f"a JSON Patch may hold at most {MAX_OPERATIONS} operations")
    for index, op in enumerate(operations):
        if not isinstance(op, dict) or op.get("op") not in _OPS or not isinstance(op.get("path"), str):
            raise UnprocessablePatch(
                f"operation {index} must be an object with 'op' (add, remove, replace, move, copy, test) and 'path'"
            )
        for key in ("path", "from"):
            pointer = op.get(key)
            if isinstance(pointer, str) and pointer.split("/")[1:2] in (["resourceType"], ["id"]):
                raise UnprocessablePatch(f"operation {index} ({op['op']}) may not change resourceType or id")
    try:
        patched = jsonpatch.JsonPatch(operations).apply(copy.deepcopy(resource))
    except jsonpatch.JsonPatchTestFailed:
        raise UnprocessablePatch("a 'test' operation of the patch failed") from None
    except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException, TypeError, ValueError) as exc:
        raise UnprocessablePatch(f"the patch cannot be applied: {_safe(exc)}") from None
    if not isinstance(patched, dict):
        raise UnprocessablePatch("the patch must leave a resource (a JSON object)")
    kept: dict[str, Any] = _without_emptied(patched, resource)
    return kept


def _without_emptied(value: Any, before: Any) -> Any:
    """The patched resource without the arrays and objects the patch emptied (removing a Patient's last `name`
    leaves `"name": []`, which R4 JSON does not allow): the element is gone, as the patch meant. What was not
    there before (an explicit `add` of `[]` or `{}`) stays, as do nulls, and validation refuses them. Arrays are
    compared element by element where they line up; a stored resource holds no empty container, so an empty one
    in a patched array came from the patch emptying it."""
    if isinstance(value, dict):
        old = before if isinstance(before, dict) else {}
        kept = {key: _without_emptied(item, old.get(key)) for key, item in value.items()}
        return {key: item for key, item in kept.items() if not (_empty(item) and old.get(key) not in (None, [], {}))}
    if isinstance(value, list):
        old_items = before if isinstance(before, list) else []
        kept_items = [_without_emptied(item, old_items[i] if i < len(old_items) else None) for i, item in enumerate(value)]
        return [item for item in kept_items if not (_empty(item) and old_items)]
    return value


def _empty(value: Any) -> bool:
    return isinstance(value, list | dict) and not value


def _safe(exc: Exception) -> str:
    """jsonpatch's messages name paths and operation kinds, but some quote values: keep only the kind of error."""
    text = str(exc)
    if "member" in text and "not found" in text or "can't" in text.lower() or "not found" in text:
        return "a path of the patch does not exist in the resource"
    if "out of range" in text or "index" in text.lower():
        return "an array index of the patch is out of range"
    return type(exc).__name__
