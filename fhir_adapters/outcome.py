"""OperationOutcome resources (http://hl7.org/fhir/R4/operationoutcome.html) for errors and warnings."""

from __future__ import annotations

from typing import Any, Final, Literal

from fhir_adapters.errors import FhirInputError

Severity = Literal["fatal", "error", "warning", "information"]
SEVERITIES: Final = frozenset({"fatal", "error", "warning", "information"})


def operation_outcome(
    severity: Severity, code: str, diagnostics: str, expression: str | list[str] | None = None
) -> dict[str, Any]:
    """One-issue OperationOutcome; `code` is an IssueType (http://hl7.org/fhir/R4/valueset-issue-type.html).

    `diagnostics` must already be safe to show (no PHI). A text narrative is not added: it is optional for
    OperationOutcome (dom-6 is a best-practice warning) and would only repeat the diagnostics.
    """
    if severity not in SEVERITIES:
        raise ValueError(f"unknown OperationOutcome severity {severity!r}")
    issue: dict[str, Any] = {"severity": severity, "code": code, "diagnostics": diagnostics}
    if expression:
        issue["expression"] = [expression] if isinstance(expression, str) else list(expression)
    return {"resourceType": "OperationOutcome", "issue": [issue]}


def outcome_for_input_error(error: FhirInputError) -> dict[str, Any]:
    """The OperationOutcome for a FhirInputError (its safe message, issue code and expression)."""
    return operation_outcome("error", error.code, error.message, error.expression)
