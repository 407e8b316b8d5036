"""Business hours: is a calendar open at a given instant?

The instant is epoch seconds handed in by the caller of the engine (never read from a
clock here); `zoneinfo` turns it into local time in the calendar's zone, so daylight
saving changes and callers in other zones need no special cases. Used by the
`condition` node of `ivr.engine`; the calendars themselves are `ivr.schema.Calendar`.
"""

from __future__ import annotations

import zoneinfo
from datetime import UTC, date, datetime, timedelta

from ivr.schema import Calendar


def local_time(calendar: Calendar, now: float) -> datetime:
    return datetime.fromtimestamp(now, tz=UTC).astimezone(zoneinfo.ZoneInfo(calendar.time_zone))


def is_holiday(calendar: Calendar, now: float) -> bool:
    return _holiday(calendar, local_time(calendar, now).date())


def is_open(calendar: Calendar, now: float) -> bool:
    """Open now: inside a range of today's hours, or of yesterday's range that runs
    past midnight, and the day that range belongs to is not a holiday."""
    local = local_time(calendar, now)
    minute = local.hour * 60 + local.minute
    weekly = calendar.weekly()
    today, yesterday = local.date(), local.date() - timedelta(days=1)
    for start, end in weekly[local.weekday()]:
        if start < end and start <= minute < end and not _holiday(calendar, today):
            return True
        if end < start and minute >= start and not _holiday(calendar, today):
            return True
    for start, end in weekly[(local.weekday() - 1) % 7]:
        if end < start and minute < end and not _holiday(calendar, yesterday):
            return True
    return False


def _holiday(calendar: Calendar, day: date) -> bool:
    return any(lo <= day <= hi for lo, hi in calendar.holiday_ranges())
