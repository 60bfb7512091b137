"""Opening hours: the rules of the written form, and whether a site is open at a local time."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from analytics.opening_hours import OpeningHoursError, check, is_open, minute_of

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
    assert is_open(hours, datetime(2026, 11, 23, 12, 0, tzinfo=OSLO))  # a Monday, at the seam


def test_open_is_judged_on_the_sites_wall_clock() -> None:
    hours = check({"mon": [("06:00", "22:00")], "sat": [("08:00", "12:00"), ("14:00", "20:00")]})
    monday = datetime(2026, 11, 23, tzinfo=OSLO)
    assert monday.weekday() == 0
    assert not is_open(hours, monday.replace(hour=5, minute=59))
    assert is_open(hours, monday.replace(hour=6))
    assert is_open(hours, monday.replace(hour=21, minute=59))
    assert not is_open(hours, monday.replace(hour=22))  # closes: [opens, closes)
    saturday = datetime(2026, 11, 28, 13, 0, tzinfo=OSLO)
    assert not is_open(hours, saturday)  # the lunch break
    assert is_open(hours, saturday.replace(hour=14))
    assert not is_open(hours, datetime(2026, 11, 24, 12, 0, tzinfo=OSLO))  # Tuesday: not named, closed
    assert is_open(None, monday)  # not set: always open


def test_a_day_open_until_midnight_is_open_in_its_last_minute() -> None:
    hours = check({"fri": [("18:00", "24:00")], "sat": [("00:00", "02:00")]})
    friday = datetime(2026, 11, 27, 23, 59, tzinfo=OSLO)
    assert is_open(hours, friday)
    assert is_open(hours, datetime(2026, 11, 28, 1, 59, tzinfo=OSLO))
    assert not is_open(hours, datetime(2026, 11, 28, 2, 0, tzinfo=OSLO))
