"""Opening hours: the rules of the written form, whether a site is open at an instant and since when
(wall-clock hours across daylight-saving changes and midnight), and how a stored row is read."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from analytics.opening_hours import (
    ALWAYS,
    WEEKDAYS,
    OpeningHoursError,
    SiteHours,
    check,
    is_open,
    minute_of,
    open_since,
)

OSLO = ZoneInfo("Europe/Oslo")


def test_normal_form_keeps_weekday_order_and_leaves_closed_days_out() -> None:
    hours = check({"sun": [], "sat": [("08:00", "12:00"), ("14:00", "20:00")], "mon": [("06:00", "24:00")]})
    assert list(hours) == ["mon", "sat"]
    assert hours["sat"] == [("08:00", "12:00"), ("14:00", "20:00")]
    assert minute_of("24:00") == 1440
    assert minute_of("06:30") == 390


@pytest.mark.parametrize(
    ("raw", "path", "words"),
    [
        ({"mon": [("06:00", "25:00")]}, "mon[0]", "not a time"),
        ({"mon": [("24:30", "24:45")]}, "mon[0]", "after 24:00"),
        ({"tue": [("6:00", "22:00")]}, "tue[0]", "not a time"),
        ({"wed": [("22:00", "06:00")]}, "wed[0]", "not before it closes"),
        ({"thu": [("10:00", "10:00")]}, "thu[0]", "not before it closes"),
        ({"fri": [("06:00", "12:00"), ("11:00", "20:00")]}, "fri[1]", "must not overlap"),
        ({"fri": [("14:00", "20:00"), ("06:00", "12:00")]}, "fri[1]", "in order"),
        ({"sat": [("06:00",)]}, "sat[0]", "[opens, closes]"),
        ({"monday": [("06:00", "22:00")]}, "monday", "not a weekday"),
    ],
)
def test_broken_hours_name_the_entry(raw: dict[str, list[tuple[str, ...]]], path: str, words: str) -> None:
    with pytest.raises(OpeningHoursError) as info:
        check(raw)
    assert info.value.path == path
    assert words in info.value.detail


def test_intervals_may_touch() -> None:
    hours = check({"mon": [("06:00", "12:00"), ("12:00", "18:00")]})
    assert is_open(hours, OSLO, datetime(2026, 11, 23, 12, 0, tzinfo=OSLO))  # a Monday, at the seam


def test_open_is_judged_on_the_sites_wall_clock() -> None:
    hours = check({"mon": [("06:00", "22:00")], "sat": [("08:00", "12:00"), ("14:00", "20:00")]})
    monday = datetime(2026, 11, 23, tzinfo=OSLO)
    assert monday.weekday() == 0
    assert not is_open(hours, OSLO, monday.replace(hour=5, minute=59))
    assert is_open(hours, OSLO, monday.replace(hour=6))
    assert is_open(hours, OSLO, monday.replace(hour=21, minute=59))
    assert not is_open(hours, OSLO, monday.replace(hour=22))  # closes: [opens, closes)
    saturday = datetime(2026, 11, 28, 13, 0, tzinfo=OSLO)
    assert not is_open(hours, OSLO, saturday)  # the lunch break
    assert is_open(hours, OSLO, saturday.replace(hour=14))
    assert not is_open(hours, OSLO, datetime(2026, 11, 24, 12, 0, tzinfo=OSLO))  # Tuesday: not named, closed
    assert is_open(None, OSLO, monday)  # not set: always open


def test_a_day_open_until_midnight_is_open_in_its_last_minute() -> None:
    hours = check({"fri": [("18:00", "24:00")], "sat": [("00:00", "02:00")]})
    friday = datetime(2026, 11, 27, 23, 59, tzinfo=OSLO)
    assert is_open(hours, OSLO, friday)
    assert is_open(hours, OSLO, datetime(2026, 11, 28, 1, 59, tzinfo=OSLO))
    assert not is_open(hours, OSLO, datetime(2026, 11, 28, 2, 0, tzinfo=OSLO))


H = timedelta(hours=1)
UTC_ZONE = ZoneInfo("UTC")
WEEK = check({day: [("06:00", "22:00")] for day in WEEKDAYS})


def at(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc,arg-type]


def test_open_since_is_the_start_of_the_current_opening() -> None:
    # Monday 2026-11-23, 09:00 UTC = 10:00 in Oslo: open since 06:00 Oslo = 05:00 UTC
    assert open_since(WEEK, OSLO, at(2026, 11, 23, 9, 0)) == at(2026, 11, 23, 5, 0)
    assert open_since(WEEK, OSLO, at(2026, 11, 23, 4, 59)) is None  # 05:59 in Oslo
    assert open_since(WEEK, OSLO, at(2026, 11, 23, 21, 0)) is None  # 22:00 in Oslo: closes is excluded
    assert open_since(None, OSLO, at(2026, 11, 23, 3, 0)) == ALWAYS  # not set: always open
    assert open_since({}, OSLO, at(2026, 11, 23, 12, 0)) is None  # no day named: closed all week
    always = check({day: [("00:00", "24:00")] for day in WEEKDAYS})
    assert open_since(always, OSLO, at(2026, 11, 23, 12, 0)) == ALWAYS  # open for the whole week before


def test_a_night_across_midnight_is_one_opening() -> None:
    night = check({"mon": [("22:00", "24:00")], "tue": [("00:00", "02:00")]})
    # in UTC: open from Monday 22:00 across midnight UTC to Tuesday 02:00
    assert open_since(night, UTC_ZONE, at(2026, 11, 23, 23, 59)) == at(2026, 11, 23, 22, 0)
    assert open_since(night, UTC_ZONE, at(2026, 11, 24, 0, 0)) == at(2026, 11, 23, 22, 0)
    assert open_since(night, UTC_ZONE, at(2026, 11, 24, 1, 59)) == at(2026, 11, 23, 22, 0)
    assert open_since(night, UTC_ZONE, at(2026, 11, 24, 2, 0)) is None
    assert open_since(night, UTC_ZONE, at(2026, 11, 23, 21, 59)) is None
    # Tokyo (UTC+9) open 08:00-10:00 local: 23:00-01:00 UTC, across midnight UTC, the local day before's date
    tokyo = ZoneInfo("Asia/Tokyo")
    morning = check({"tue": [("08:00", "10:00")]})
    assert open_since(morning, tokyo, at(2026, 11, 24, 0, 30)) == at(2026, 11, 23, 23, 0)
    assert open_since(morning, tokyo, at(2026, 11, 23, 23, 0)) == at(2026, 11, 23, 23, 0)
    assert open_since(morning, tokyo, at(2026, 11, 24, 1, 0)) is None
    assert open_since(morning, tokyo, at(2026, 11, 24, 23, 30)) is None  # Wednesday 08:30 in Tokyo


def test_the_hours_stay_wall_clock_hours_when_the_clocks_change() -> None:
    # Oslo, Sunday 2026-03-29: 02:00 CET -> 03:00 CEST (a 23-hour day); 06:00 is 04:00 UTC, 22:00 20:00 UTC
    assert open_since(WEEK, OSLO, at(2026, 3, 29, 4, 0)) == at(2026, 3, 29, 4, 0)
    assert open_since(WEEK, OSLO, at(2026, 3, 29, 3, 59)) is None
    assert open_since(WEEK, OSLO, at(2026, 3, 29, 19, 59)) == at(2026, 3, 29, 4, 0)
    assert open_since(WEEK, OSLO, at(2026, 3, 29, 20, 0)) is None
    assert open_since(WEEK, OSLO, at(2026, 3, 28, 5, 0)) == at(2026, 3, 28, 5, 0)  # the day before: CET
    # Sunday 2026-10-25: 03:00 CEST -> 02:00 CET (a 25-hour day); 06:00 is 05:00 UTC
    assert open_since(WEEK, OSLO, at(2026, 10, 25, 4, 59)) is None
    assert open_since(WEEK, OSLO, at(2026, 10, 25, 5, 0)) == at(2026, 10, 25, 5, 0)
    # a night opening over the 25-hour night: Saturday 22:00 CEST (20:00 UTC) to Sunday 04:00 CET (03:00 UTC)
    night = check({"sat": [("22:00", "24:00")], "sun": [("00:00", "04:00")]})
    assert open_since(night, OSLO, at(2026, 10, 25, 2, 59)) == at(2026, 10, 24, 20, 0)
    assert open_since(night, OSLO, at(2026, 10, 25, 3, 0)) is None
    # a wall time the clock skips: 02:30 on 2026-03-29 is read as 03:30 CEST (01:30 UTC)
    skipped = check({"sun": [("02:30", "05:00")]})
    assert open_since(skipped, OSLO, at(2026, 3, 29, 1, 29)) is None
    assert open_since(skipped, OSLO, at(2026, 3, 29, 1, 30)) == at(2026, 3, 29, 1, 30)
    # a wall time shown twice: 02:30 on 2026-10-25 is its first showing (02:30 CEST, 00:30 UTC)
    twice = check({"sun": [("02:30", "05:00")]})
    assert open_since(twice, OSLO, at(2026, 10, 25, 0, 30)) == at(2026, 10, 25, 0, 30)
    assert is_open(twice, OSLO, at(2026, 10, 25, 3, 59))  # 04:59 CET
    assert not is_open(twice, OSLO, at(2026, 10, 25, 4, 0))


def test_a_stored_row_is_read_leniently(caplog: pytest.LogCaptureFixture) -> None:
    stored = SiteHours.stored("gym-a", "Europe/Oslo", {"mon": [["06:00", "22:00"]]})
    assert stored == SiteHours(OSLO, {"mon": [("06:00", "22:00")]})
    assert stored.timezone_name == "Europe/Oslo"
    assert stored.is_open(at(2026, 11, 23, 5, 0))
    assert not stored.is_open(at(2026, 11, 24, 5, 0))  # Tuesday: closed
    assert SiteHours.stored("gym-a", "UTC", None).open_since(at(2026, 11, 24, 5, 0)) == ALWAYS
    with caplog.at_level(logging.WARNING, logger="analytics.opening_hours"):
        assert SiteHours.stored("gym-a", "Mars/Olympus", None) == SiteHours(UTC_ZONE, None)
        assert SiteHours.stored("gym-a", "UTC", {"mon": [["22:00", "06:00"]]}) == SiteHours(UTC_ZONE, None)
        assert SiteHours.stored("gym-a", "UTC", {"mon": 5}) == SiteHours(UTC_ZONE, None)
        assert SiteHours.stored("gym-a", "UTC", ["mon"]) == SiteHours(UTC_ZONE, None)
    assert len(caplog.records) == 4
    assert "Mars/Olympus" in caplog.records[0].getMessage()
