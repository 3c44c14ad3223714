"""The access vocabulary, spelled once: what a caller does to a resource, and what the access log records.

Everything that names an action (the store's access seam, the SMART scope check, the consent engine's
mapping to FHIR consent actions, the access-log entries) uses these; each mapping is typed by `Action`,
and tests/test_actions.py holds every mapping to the whole vocabulary.
"""

from __future__ import annotations

from typing import Final, Literal, get_args

# FHIR interactions on a resource (R4 http.html), plus `export` (Bulk Data).
Action = Literal["read", "vread", "history", "search", "create", "update", "delete", "export"]
ACTIONS: Final[frozenset[str]] = frozenset(get_args(Action))
READ_ACTIONS: Final[frozenset[str]] = frozenset({"read", "vread", "history", "search", "export"})
WRITE_ACTIONS: Final[frozenset[str]] = frozenset({"create", "update", "delete"})

# What an access-log entry may record: every action, and `decide` (a consent question, CDS Hooks).
LoggedAction = Literal["read", "vread", "history", "search", "create", "update", "delete", "export", "decide"]
LOGGED_ACTIONS: Final[frozenset[str]] = frozenset(get_args(LoggedAction))

assert READ_ACTIONS | WRITE_ACTIONS == ACTIONS and not READ_ACTIONS & WRITE_ACTIONS, "every action reads or writes"
assert ACTIONS < LOGGED_ACTIONS, "every action can be logged"
