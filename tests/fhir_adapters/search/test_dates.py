"""Implicit ranges of FHIR dates (R4 3.1.1.4.6) in fhir_adapters.search.dates."""

from __future__ import annotations

from datetime import UTC, datetime

from fhir_strategies import SETTINGS, fhir_dates
from hypothesis import given
from hypothesis import strategies as st

from fhir_adapters.search.dates import date_range, interval_datetime


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
