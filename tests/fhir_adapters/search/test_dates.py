"""Implicit ranges of FHIR dates (R4 3.1.1.4.6) in fhir_adapters.search.dates."""

from __future__ import annotations

from datetime import UTC, datetime

from fhir_strategies import SETTINGS, fhir_dates
from hypothesis import given
from hypothesis import strategies as st

from fhir_adapters.search.dates import approximate, date_range, instant_range, interval_datetime


def test_date_range_precision() -> None:
    year = date_range("2020")
    assert year is not None and year.lo is not None and year.hi is not None
    assert interval_datetime(year.lo) == datetime(2020, 1, 1, tzinfo=UTC)
    assert interval_datetime(year.hi) == datetime(2021, 1, 1, tzinfo=UTC)
    feb = date_range("2024-02")
    assert (
        feb is not None
        and feb.hi is not None
        and interval_datetime(feb.hi) == datetime(2024, 3, 1, tzinfo=UTC)
    )
    minute = date_range("2020-01-01T10:30")
    assert minute is not None and minute.lo is not None and minute.hi == minute.lo + 60_000_000
    millis = date_range("2020-01-01T10:30:00.123Z")
    assert millis is not None and millis.lo is not None and millis.hi == millis.lo + 1000
    assert date_range("9999") is not None
    for bad in ["2020-13", "2020-02-30", "20", "2020-1-1", "2020-01-01T25:00", "2020-01-01T10:00+15:00", "x"]:
        assert date_range(bad) is None


@SETTINGS
@given(st.text(max_size=40) | fhir_dates())
def test_date_range_never_raises(text: str) -> None:
    interval = date_range(text)
    if interval is not None:
        assert interval.lo is not None and interval.hi is not None and interval.lo < interval.hi


def test_approximately_reaches_ten_percent_of_the_gap_to_now_and_at_least_the_values_precision() -> None:
    """R4 3.1.1.4.2 `ap`: "for a date, 10% of the gap between now and the date"; never less than the value's own
    precision (a day around a day), which is all there is to go by without `now`."""
    day = date_range("2025-12-17")
    assert day is not None
    around = approximate(day, None)
    assert around.lo == date_range("2025-12-16").lo and around.hi == date_range("2025-12-18").hi  # type: ignore[union-attr]
    assert around.overlaps(instant_range(datetime(2025, 12, 16, 9, 0, tzinfo=UTC)))
    born = date_range("1946-06-20")
    assert born is not None
    # ~80 years before now: ±8 years, so 1940 and 1952 are "approximately" 1946-06-20, 1935 is not.
    wide = approximate(born, datetime(2026, 12, 2, tzinfo=UTC))
    assert wide.overlaps(instant_range(datetime(1939, 1, 1, tzinfo=UTC)))
    assert wide.overlaps(instant_range(datetime(1953, 1, 1, tzinfo=UTC)))
    assert not wide.overlaps(instant_range(datetime(1935, 1, 1, tzinfo=UTC)))
    # A value close to now still gets its own precision around it.
    today = date_range("2026-12-02")
    assert today is not None
    near = approximate(today, datetime(2026, 12, 2, 12, tzinfo=UTC))
    assert near.lo == date_range("2026-12-01").lo  # type: ignore[union-attr]
