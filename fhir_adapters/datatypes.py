"""FHIR R4 primitive datatypes the service checks and writes itself (http://hl7.org/fhir/R4/datatypes.html)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final

# `id`: [A-Za-z0-9\-\.]{1,64} (datatypes.html#id). Use with fullmatch: `$` would also accept a final newline.
ID: Final = re.compile(r"[A-Za-z0-9\-.]{1,64}")


def is_id(value: object) -> bool:
    """Whether `value` is a FHIR `id`."""
    return isinstance(value, str) and ID.fullmatch(value) is not None


def instant(moment: datetime) -> str:
    """A FHIR `instant` (xs:dateTime with a zone), in UTC to the millisecond; a naive moment is taken as UTC."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def with_version_meta(resource: Mapping[str, Any], version_id: int, last_updated: datetime) -> dict[str, Any]:
    """A copy of `resource` whose `meta.versionId` and `meta.lastUpdated` say which version it is (resource.html#Meta);
    the rest of its meta (profiles, security labels, tags) is kept."""
    stamped = dict(resource)
    meta = dict(stamped.get("meta") or {})
    meta["versionId"] = str(version_id)
    meta["lastUpdated"] = instant(last_updated)
    stamped["meta"] = meta
    return stamped
