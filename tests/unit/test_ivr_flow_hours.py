"""Business hours and holidays in a calendar's own time zone, from epoch seconds."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest
import yaml

from ivr.hours import is_holiday, is_open
from ivr.schema import Calendar

NEW_YORK = ZoneInfo("America/New_York")
SHANGHAI = ZoneInfo("Asia/Shanghai")


def at(zone: ZoneInfo, *parts: int) -> float:
    return datetime(*parts, tzinfo=zone).timestamp()  # type: ignore[misc]


OFFICE = Calendar(
    time_zone="America/New_York",
    hours={"mon-fri": ["09:00-12:00", "13:00-17:30"], "sat": ["10:00-14:00"]},
    holidays=["2026-07-03", "2026-12-24..2026-12-26"],
)


@pytest.mark.parametrize(
    ("local", "expected"),
    [
        ((2026, 3, 2, 9, 0), True),  # Monday opening minute
        ((2026, 3, 2, 8, 59), False),
        ((2026, 3, 2, 12, 30), False),  # lunch
        ((2026, 3, 2, 17, 29), True),
        ((2026, 3, 2, 17, 30), False),  # closing minute is closed
        ((2026, 3, 7, 11, 0), True),  # Saturday
        ((2026, 3, 8, 11, 0), False),  # Sunday
        ((2026, 7, 3, 10, 0), False),  # Friday, holiday
        ((2026, 12, 25, 10, 0), False),  # inside a holiday range
        ((2026, 12, 28, 10, 0), True),
    ],
)
def test_opening_hours_in_local_time(local: tuple[int, ...], expected: bool) -> None:
    assert is_open(OFFICE, at(NEW_YORK, *local)) is expected


def test_the_same_instant_is_open_in_one_zone_and_closed_in_another() -> None:
    """10:00 in New York is 22:00 or 23:00 in Shanghai."""
    shanghai = OFFICE.model_copy(update={"time_zone": "Asia/Shanghai"})
    instant = at(NEW_YORK, 2026, 3, 2, 10, 0)
    assert is_open(OFFICE, instant)
    assert not is_open(shanghai, instant)


def test_daylight_saving_change_keeps_local_hours() -> None:
    """9:00 local is open on both sides of the US spring-forward (8 March 2026)."""
    before = at(NEW_YORK, 2026, 3, 6, 9, 0)  # Friday, EST (UTC-5)
    after = at(NEW_YORK, 2026, 3, 9, 9, 0)  # Monday, EDT (UTC-4)
    assert is_open(OFFICE, before) and is_open(OFFICE, after)
    assert (after - before) % 86400 == 82800  # one hour fewer between the two


def test_ranges_past_midnight_and_weekday_ranges_that_wrap() -> None:
    night = Calendar(
        time_zone="Asia/Shanghai", hours={"fri-mon": ["22:00-06:00"]}, holidays=["2026-03-09"]
    )
    assert is_open(night, at(SHANGHAI, 2026, 3, 6, 23, 0))  # Friday night
    assert is_open(night, at(SHANGHAI, 2026, 3, 7, 5, 59))  # Saturday morning, from Friday
    assert is_open(night, at(SHANGHAI, 2026, 3, 17, 3, 0))  # Tue 03:00 belongs to Monday
    assert not is_open(night, at(SHANGHAI, 2026, 3, 10, 3, 0))  # ... not to a holiday Monday
    assert not is_open(night, at(SHANGHAI, 2026, 3, 10, 23, 0))  # Tuesday night
    assert not is_open(night, at(SHANGHAI, 2026, 3, 5, 3, 0))  # Thursday 03:00 (Wed night)
    assert not is_open(night, at(SHANGHAI, 2026, 3, 9, 23, 0))  # Monday is a holiday


def test_holiday_uses_the_local_date() -> None:
    """At 23:30 on 2 July in New York it is already 3 July in UTC, but not a holiday."""
    assert not is_holiday(OFFICE, at(NEW_YORK, 2026, 7, 2, 23, 30))
    assert is_holiday(OFFICE, at(NEW_YORK, 2026, 7, 3, 0, 30))


def test_unquoted_yaml_dates_are_accepted() -> None:
    data = yaml.safe_load("time_zone: UTC\nhours: {mon: ['09:00-17:00']}\nholidays: [2026-01-01]")
    assert Calendar.model_validate(data).holidays == ["2026-01-01"]
