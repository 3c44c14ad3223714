"""Errors raised by `zk`: one root, each message safe to show (names the field, never secret values)."""

from __future__ import annotations


class ZkError(ValueError):
    """Root of every error `zk` raises on purpose. `str(e)` is safe to show a caller."""


class MalformedInput(ZkError):
    """A file, point, field element or argument is not well formed (the message names which)."""


class CriteriaError(ZkError):
    """A criteria document is invalid or asks for something the circuit cannot express."""


class ProverError(ZkError):
    """Witness generation or proving failed (e.g. the inputs do not satisfy the circuit)."""
