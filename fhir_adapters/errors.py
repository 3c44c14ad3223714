"""Errors for bad FHIR input; every message is safe to show a caller (never PHI, never the offending value).

`status` is the HTTP status hint and `code` the FHIR IssueType
(http://hl7.org/fhir/R4/valueset-issue-type.html), so the API can turn any of them into an OperationOutcome.
"""

from __future__ import annotations


class FhirInputError(ValueError):
    """Root of the FHIR input errors. `str(e) == e.message`, which is safe to show a caller."""

    status: int = 400
    code: str = "invalid"

    def __init__(self, message: str, *, expression: str | None = None, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.expression = expression
        if status is not None:
            self.status = status

    def __str__(self) -> str:
        return self.message


class MalformedJson(FhirInputError):
    """The body is not a JSON object (syntax error, wrong top-level type, bad encoding)."""

    status = 400
    code = "structure"


class InvalidResource(FhirInputError):
    """The JSON is not a valid R4B resource; `expression` names the first failing path."""

    status = 400
    code = "structure"


class UnknownResourceType(FhirInputError):
    """`resourceType` (or a URL segment) names no FHIR R4B resource."""

    status = 404
    code = "not-supported"


class UnsupportedSearch(FhirInputError):
    """A search parameter, modifier, prefix or value we do not understand (FHIR R4 3.1.1.4: reject, not ignore)."""

    status = 400
    code = "not-supported"


class InvalidSearchValue(UnsupportedSearch):
    """A search parameter we support, given a value it cannot take (a date that is not a date, `_total=maybe`):
    the request is wrong, not the server lacking a feature, so the IssueType is `invalid`. Still an
    UnsupportedSearch, so everything that handles those handles it."""

    code = "invalid"


class InvalidBundle(FhirInputError):
    """A batch/transaction Bundle we cannot process; `expression` names the entry, e.g. `Bundle.entry[3]`."""

    status = 400
    code = "invalid"

    def __init__(
        self,
        message: str,
        *,
        entry_index: int | None = None,
        expression: str | None = None,
        status: int | None = None,
    ) -> None:
        if expression is None and entry_index is not None:
            expression = f"Bundle.entry[{entry_index}]"
        super().__init__(message, expression=expression, status=status)
        # The entry's own error when it is one the same request outside a Bundle gets too (its resource does not
        # validate, its search does not parse): a batch answers that entry with it (R4 3.1.0.11.1).
        self.cause: FhirInputError | None = None
        self.entry_index = entry_index
