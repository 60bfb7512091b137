"""A site's opening hours: per weekday, the local times it is open, and whether the site is open at an instant
(no clock, no database: the time is passed in).

Written as ``{"mon": [["06:00", "22:00"]], "sat": [["08:00", "12:00"], ["14:00", "20:00"]]}``: each
named weekday (``mon`` .. ``sun``) has intervals ``[opens, closes)`` of local wall-clock time, ``HH:MM`` from
``00:00`` to ``24:00``, in order and not overlapping; a weekday that is not named (or has no interval) is
closed. An interval does not run past midnight: a night opening is split over the two days (``"fri":
[["18:00", "24:00"]], "sat": [["00:00", "02:00"]]``: one opening, from Friday 18:00 to Saturday 02:00). Stored
in ``sites.opening_hours``, the one place a site's hours are kept (set with ``POST``/``PATCH /v1/sites`` or
``PUT /v1/sites/{site}/opening-hours``); ``None`` means "not set": the site is always open. ``{}`` (no day
named) is closed all week.

Whether a site is open is asked of :class:`SiteHours` (a ``sites`` row's hours and timezone) by everything
that cares: the fleet alerts (:mod:`analytics.fleet`) and the live floor (:mod:`api.live.floor`) count a
silence only while the site is open, from the start of the opening at the earliest (:func:`open_since`).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Final, Literal, get_args
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

log = logging.getLogger(__name__)

Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
WEEKDAYS: Final[tuple[Weekday, ...]] = get_args(Weekday)
OpeningHours = dict[Weekday, list[tuple[str, str]]]
_HH_MM = re.compile(r"^([01][0-9]|2[0-4]):([0-5][0-9])$")
ALWAYS: Final = datetime.min.replace(tzinfo=UTC)
"""What :func:`open_since` answers for a site open around the clock (hours not set, or open for the whole week
before the instant asked about): open since before anything it recorded."""
UTC_ZONE: Final = ZoneInfo("UTC")


class OpeningHoursError(ValueError):
    """Opening hours that break a rule above; ``path`` names the offending entry (``sat[1]``)."""

    def __init__(self, path: str, detail: str) -> None:
        super().__init__(f"{path}: {detail}" if path else detail)
        self.path = path
        self.detail = detail


def minute_of(text: str, path: str = "") -> int:
    """Minutes since local midnight of ``HH:MM`` (``24:00`` is 1440)."""
    m = _HH_MM.match(text) if isinstance(text, str) else None
    if m is None:
        raise OpeningHoursError(path, f"{text!r} is not a time HH:MM")
    minutes = int(m.group(1)) * 60 + int(m.group(2))
    if minutes > 24 * 60:
        raise OpeningHoursError(path, f"{text!r} is after 24:00")
    return minutes


def check(
    raw: Mapping[Weekday, Sequence[Sequence[str]]] | Mapping[str, Sequence[Sequence[str]]],
) -> OpeningHours:
    """The opening hours ``raw`` in normal form (weekdays in order, closed days left out); raises
    :class:`OpeningHoursError` for anything that breaks the rules."""
    unknown = sorted(set(raw) - set(WEEKDAYS))
    if unknown:
        raise OpeningHoursError(unknown[0], f"not a weekday (one of {', '.join(WEEKDAYS)})")
    out: OpeningHours = {}
    for day in WEEKDAYS:
        intervals = raw.get(day) or []
        previous_close = -1
        kept: list[tuple[str, str]] = []
        for i, interval in enumerate(intervals):
            path = f"{day}[{i}]"
            if isinstance(interval, str) or len(interval) != 2:
                raise OpeningHoursError(path, "an interval is [opens, closes]")
            opens, closes = interval
            start, end = minute_of(opens, path), minute_of(closes, path)
            if start >= end:
                raise OpeningHoursError(path, f"opens at {opens}, not before it closes at {closes}")
            if start < previous_close:
                raise OpeningHoursError(path, "intervals of a day must be in order and must not overlap")
            previous_close = end
            kept.append((opens, closes))
        if kept:
            out[day] = kept
    return out


def open_since(hours: OpeningHours | None, tz: ZoneInfo, now: datetime) -> datetime | None:
    """When the opening the site is in at the instant ``now`` began (None: closed at ``now``; :data:`ALWAYS`:
    hours not set, or open for the whole week before ``now``).

    The hours are wall-clock times of the site's timezone ``tz``: 06:00 is 06:00 on the days daylight-saving
    time starts and ends (days of 23 and 25 hours). A wall time the clock skips (02:30 when it jumps from
    02:00 to 03:00) is read as that long after the jump (03:30), and a wall time it shows twice as its first
    showing (the convention of PEP 495's ``fold=0`` and of java.time). Intervals that touch (a day's last
    ending at 24:00 and the next day's first starting at 00:00) are one opening."""
    if hours is None:
        return ALWAYS
    today = now.astimezone(tz).date()
    spans: list[tuple[datetime, datetime]] = []
    for back in range(8, -2, -1):
        day = today - timedelta(days=back)
        for opens, closes in hours.get(WEEKDAYS[day.weekday()], []):
            spans.append((_instant(day, minute_of(opens), tz), _instant(day, minute_of(closes), tz)))
    spans.sort()
    merged: list[list[datetime]] = []
    for a, b in spans:
        if merged and a <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    horizon = _instant(today - timedelta(days=7), 0, tz)
    for a, b in merged:
        if a <= now < b:
            return ALWAYS if a <= horizon else a
    return None


def is_open(hours: OpeningHours | None, tz: ZoneInfo, now: datetime) -> bool:
    """Whether a site with these (checked) hours in timezone ``tz`` is open at the instant ``now`` (hours not
    set: always open)."""
    return open_since(hours, tz, now) is not None


def _instant(day: date, minute: int, tz: ZoneInfo) -> datetime:
    # wall-clock arithmetic, then to UTC: 24:00 is the next day's 00:00 even on a 23- or 25-hour day
    wall = datetime(day.year, day.month, day.day) + timedelta(minutes=minute)
    return wall.replace(tzinfo=tz).astimezone(UTC)


@dataclass(frozen=True, slots=True)
class SiteHours:
    """A site's opening hours with the timezone they are read in: what the fleet alerts and the live floor ask
    whether the site is open (:meth:`stored` makes one from a ``sites`` row)."""

    timezone: ZoneInfo = UTC_ZONE
    hours: OpeningHours | None = None
    """None: not set, always open."""

    @classmethod
    def stored(cls, site_id: str, timezone: str | None, hours: object) -> SiteHours:
        """From a ``sites`` row (``timezone``, ``opening_hours`` as JSON). The API checks both on the way in;
        a row written around it is read leniently and logged: a timezone the tz database lacks as UTC, hours
        that break the rules as not set (always open: a device is rather reported silent than not at all)."""
        try:
            tz = ZoneInfo(timezone) if timezone else UTC_ZONE
        except (ZoneInfoNotFoundError, ValueError, OSError):
            log.warning("site %s: unknown timezone %r, read as UTC", site_id, timezone)
            tz = UTC_ZONE
        if hours is None:
            return cls(tz, None)
        try:
            if not isinstance(hours, Mapping):
                raise OpeningHoursError("", "not an object of weekdays")
            return cls(tz, check(hours))
        except (TypeError, ValueError) as exc:  # OpeningHoursError is a ValueError
            log.warning("site %s: stored opening hours ignored (always open): %s", site_id, exc)
            return cls(tz, None)

    @property
    def timezone_name(self) -> str:
        return self.timezone.key

    def open_since(self, now: datetime) -> datetime | None:
        """:func:`open_since` of these hours at ``now``."""
        return open_since(self.hours, self.timezone, now)

    def is_open(self, now: datetime) -> bool:
        return self.open_since(now) is not None
