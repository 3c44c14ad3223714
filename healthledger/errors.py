"""One exception hierarchy; every message is safe to show a caller (never PHI).

It is turned into a FHIR OperationOutcome in one place (`healthledger.api.outcomes`).
Issue codes are from http://hl7.org/fhir/R4/valueset-issue-type.html.
"""

from __future__ import annotations


class HealthLedgerError(Exception):
    """Root of every error we raise on purpose. `str(e)` is safe to show a caller."""

    status: int = 500
    code: str = "exception"  # FHIR IssueType

    def __init__(self, message: str, *, expression: str | None = None, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.expression = expression
        if status is not None:
            self.status = status


class BadRequest(HealthLedgerError, ValueError):
    status = 400
    code = "invalid"


class InvalidResource(BadRequest):
    """A resource failed validation; `expression` names the failing path."""

    status = 400
    code = "structure"


class Unprocessable(BadRequest):
    status = 422
    code = "processing"


class NotFound(HealthLedgerError, LookupError):
    status = 404
    code = "not-found"


def not_known(resource_type: str, resource_id: str) -> NotFound:
    """The one answer for an instance that is missing, deleted, erased or withheld from the caller.

    Its text depends only on what was asked, so a resource the caller may not see reads exactly like one
    that does not exist (read, vread, history, delete, batch entries).
    """
    return NotFound(f"{resource_type}/{resource_id} is not known")


def refused_write(resource_type: str) -> Forbidden:
    """The one answer for a create or update the caller may not make: which of the two it was would tell a writer
    refused either way whether the id is taken (docs/consent-semantics.md)."""
    return Forbidden(f"writing this {resource_type} is not permitted for this caller")


class Gone(HealthLedgerError, LookupError):
    status = 410
    code = "deleted"


class Conflict(HealthLedgerError):
    status = 409
    code = "conflict"


class PreconditionFailed(HealthLedgerError):
    status = 412
    code = "conflict"


class PayloadTooLarge(HealthLedgerError):
    status = 413
    code = "too-costly"


class UnsupportedMediaType(HealthLedgerError):
    status = 415
    code = "not-supported"


class Unauthorized(HealthLedgerError, PermissionError):
    status = 401
    code = "login"


class Forbidden(HealthLedgerError, PermissionError):
    status = 403
    code = "forbidden"


class InsufficientScope(Forbidden):
    """403 because the access token's scopes do not allow the request (RFC 6750 §3.1 `insufficient_scope`): the
    only 403 whose challenge names the token; a write a policy refuses is a plain Forbidden."""


class TooManyRequests(HealthLedgerError):
    """A caller past a bound on how much it may ask (e.g. access requests per organisation per day)."""

    status = 429
    code = "throttled"


class NotSupported(HealthLedgerError):
    status = 501
    code = "not-supported"


class DecryptionError(HealthLedgerError):
    """Opaque: a ciphertext did not open (wrong key, wrong AAD, tampered, or shredded key)."""

    status = 500
    code = "exception"

    def __init__(self, message: str = "ciphertext could not be opened") -> None:
        super().__init__(message)


class KeyProviderUnavailable(HealthLedgerError):
    """The key provider (a KMS or HSM, or the key file) could not be reached: nothing is decrypted or sealed
    without it, so the request fails closed, and may be retried."""

    status = 503
    code = "transient"

    def __init__(self, message: str = "the key provider is unavailable; retry later") -> None:
        super().__init__(message)


class ChainError(HealthLedgerError):
    """The chain could not be reached or refused a transaction."""

    status = 503
    code = "transient"


class ConfigurationError(HealthLedgerError):
    status = 500
    code = "exception"
