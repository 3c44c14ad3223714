"""FHIR dates as ranges of instants: the implicit range of a partial date or dateTime (R4 3.1.1.4.6).

An Interval counts microseconds since 0001-01-01T00:00Z. Dates without a timezone (birthDate, partial dates)
are taken as UTC, on the resource side and the query side alike.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from functools import lru_cache
from typing import Final


@dataclass(frozen=True)
class Interval:
    """A half-open range [lo, hi) of UTC instants in microseconds since 0001-01-01T00:00Z (None = unbounded)."""

    lo: int | None
    hi: int | None

    def overlaps(self, other: Interval) -> bool:
        return (self.lo is None or other.hi is None or self.lo < other.hi) and (
            other.lo is None or self.hi is None or other.lo < self.hi
        )


_DATE = re.compile(
    r"^(?P<y>\d{4})(-(?P<m>\d{2})(-(?P<d>\d{2})"
    r"(T(?P<H>\d{2}):(?P<M>\d{2})(:(?P<S>\d{2})(\.(?P<f>\d{1,9}))?)?(?P<tz>Z|[+-]\d{2}:\d{2})?)?)?)?$"
)
_EPOCH: Final = datetime(1, 1, 1, tzinfo=UTC)
# One past 9999-12-31T23:59:59.999999Z, the last instant FHIR can write: where open ranges end.
END_OF_TIME: Final = (datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC) - _EPOCH) // timedelta(
    microseconds=1
) + 1


def _micros(moment: datetime) -> int:
    return (moment - _EPOCH) // timedelta(microseconds=1)


def date_range(text: str) -> Interval | None:
    """The implicit range of a FHIR date/dateTime/instant (R4 3.1.1.4.6), or None if it is not one.

    `2020` -> all of 2020, `2020-05` -> May, `2020-05-01T10:00Z` -> that minute; no timezone = UTC.
    """
    match = _DATE.match(text) if isinstance(text, str) else None
    if match is None:
        return None
    g = match.groupdict()
    try:
        year = int(g["y"])
        if g["m"] is None:
            return _span(datetime(year, 1, 1, tzinfo=UTC), "year")
        month = int(g["m"])
        if g["d"] is None:
            return _span(datetime(year, month, 1, tzinfo=UTC), "month")
        day = int(g["d"])
        if g["H"] is None:
            return _span(datetime(year, month, day, tzinfo=UTC), "day")
        tz = UTC if g["tz"] in (None, "Z") else _offset(g["tz"])
        second = min(int(g["S"] or 0), 59)  # a leap second (:60) is taken as :59
        fraction = g["f"] or ""
        local = datetime(
            year, month, day, int(g["H"]), int(g["M"]), second, int((fraction + "000000")[:6]), tz
        )
        start = _micros(local.astimezone(UTC))
        if g["S"] is None:
            unit = 60_000_000
        elif not fraction:
            unit = 1_000_000
        else:
            unit = max(1, 10 ** (6 - min(len(fraction), 6)))
        return Interval(start, start + unit)
    except (ValueError, OverflowError):
        return None


@lru_cache(maxsize=256)
def _offset(tz: str) -> timezone:
    sign = 1 if tz[0] == "+" else -1
    hours, minutes = int(tz[1:3]), int(tz[4:6])
    if hours > 14 or minutes > 59:
        raise ValueError("timezone offset out of range")
    return timezone(sign * timedelta(hours=hours, minutes=minutes))


def _span(start: datetime, unit: str) -> Interval:
    lo = _micros(start)
    try:
        if unit == "year":
            end = start.replace(year=start.year + 1)
        elif unit == "month":
            end = (
                start.replace(year=start.year + 1, month=1)
                if start.month == 12
                else start.replace(month=start.month + 1)
            )
        else:
            end = start + timedelta(days=1)
        return Interval(lo, _micros(end))
    except (ValueError, OverflowError):
        return Interval(lo, END_OF_TIME)


def instant_range(moment: datetime) -> Interval:
    """A stored timestamp as a range (one microsecond wide); naive datetimes are taken as UTC."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    start = _micros(moment.astimezone(UTC))
    return Interval(start, start + 1)


def interval_datetime(us: int) -> datetime:
    """Microseconds since 0001-01-01T00:00Z (an Interval bound) as an aware UTC datetime."""
    return _EPOCH + timedelta(microseconds=us)


def approximate(s: Interval, now: datetime | None) -> Interval:
    """`ap`: the value's range widened on each side by 10% of the gap between the value and now (R4 3.1.1.4.2:
    "for a date, 10% of the gap between now and the date"), and by at least the value's own precision (a day
    around a day, a year around a year: the least a client expects of "approximately"). `now` None: by that
    precision only."""
    assert s.lo is not None and s.hi is not None
    slack = s.hi - s.lo
    if now is not None:
        slack = max(slack, abs(instant_range(now).lo - s.lo) // 10)  # type: ignore[operator]
    slack = max(slack, 1)
    return Interval(max(0, s.lo - slack), min(END_OF_TIME, s.hi + slack))
