"""A patient's access log, newest first, read through the /fhir AuditEvent API as the patient.

The API pages the log in append order (oldest first) and filters by patient and date; the newest entries
are the last pages, so the total is asked first and the reading starts `limit` entries before the end.
Append order follows when entries reached the table, within a second or so of when they were made, so the
window read is shown sorted by the time recorded.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

from fhir_adapters.readable.access import AccessView, describe_access
from healthledger.web.fhir_client import FhirClient, entries

PAGE = 100
DEFAULT_LIMIT = 1000


@dataclass(frozen=True)
class AccessWindow:
    accesses: list[AccessView]  # newest first
    total: int  # entries in the date range
    truncated: bool  # older entries in the range were not read


def latest_accesses(
    api: FhirClient, patient_id: str, me: str, *, start: date | None = None, end: date | None = None,
    limit: int = DEFAULT_LIMIT,
) -> AccessWindow:
    """The newest `limit` entries about the patient between `start` and `end` (whole days, inclusive)."""
    params = [("patient", f"Patient/{patient_id}")]
    if start is not None:
        params.append(("date", f"ge{start.isoformat()}"))
    if end is not None:
        params.append(("date", f"lt{(end + timedelta(days=1)).isoformat()}"))
    total = int(api.search("AuditEvent", [*params, ("_count", "0")]).get("total") or 0)
    # A page more than the window: an entry made a moment after another can reach the log before it (see above),
    # so the newest `limit` by time are among the last `limit + PAGE` appended.
    offset = max(0, total - limit - PAGE)
    found: list[dict[str, Any]] = []
    while offset < total:
        bundle = api.search("AuditEvent", [*params, ("_count", str(PAGE)), ("_offset", str(offset))])
        page = list(entries(bundle))
        if not page:
            break
        found.extend(page)
        offset += len(page)
    # Newest first by when each access was made: the log's append order is when an entry reached the table, and
    # a read's entry reaches it from the spool (healthledger.audit.spool) after entries made later by writes.
    views = [describe_access(event, me) for event in reversed(found)]
    views.sort(key=lambda view: view.recorded, reverse=True)
    return AccessWindow(views[:limit], total, total > limit)
