"""A site's opening hours: per weekday, the local times it is open (pure; no clock, no I/O).

Written as ``{"mon": [["06:00", "22:00"]], "sat": [["08:00", "12:00"], ["14:00", "20:00"]]}``: each
named weekday (``mon`` .. ``sun``) has intervals ``[opens, closes)`` of local wall-clock time, ``HH:MM`` from
``00:00`` to ``24:00``, in order and not overlapping; a weekday that is not named (or has no interval) is
closed. An interval does not run past midnight: a night opening is split over the two days (``"fri":
[["18:00", "24:00"]], "sat": [["00:00", "02:00"]]``). Stored in ``sites.opening_hours``; ``None`` means "not
set" (consumers treat such a site as always open).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Final, Literal, get_args

Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
WEEKDAYS: Final[tuple[Weekday, ...]] = get_args(Weekday)
OpeningHours = dict[Weekday, list[tuple[str, str]]]
_HH_MM = re.compile(r"^([01][0-9]|2[0-4]):([0-5][0-9])$")


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


def is_open(hours: OpeningHours | None, local: datetime) -> bool:
    """Whether a site with these (checked) hours is open at ``local`` (its own wall-clock time); hours not
    set: always open."""
    if hours is None:
        return True
    minute = local.hour * 60 + local.minute
    return any(
        minute_of(opens) <= minute < minute_of(closes)
        for opens, closes in hours.get(WEEKDAYS[local.weekday()], [])
    )
