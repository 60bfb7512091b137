"""Parameter types of the API and the one rule for times and ranges.

* Identifiers (site, device) in a path match the topic-tree id pattern; anything else is 422.
* Times need an offset (``...Z`` or ``+01:00``): a naive time is 422.
* A time or day used to *select* data (``since``, ``until``) lies in ``[QUERY_EARLIEST, QUERY_LATEST)``;
  a time that is *written* (a check-in, a consent) lies in ``[WRITE_EARLIEST, now + max_future_s]``
  (:func:`check_written`). Anything else is 422, so no arithmetic on a date can leave Python's or
  PostgreSQL's range.
* ``since`` must be before ``until`` (for days: not after); a reversed range is 422 (:func:`check_range`).
* A NUL character in any path or query parameter is 422 (:class:`api.middleware.RejectNul`).
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Final, TypeVar

from fastapi import Path, Query
from pydantic import AfterValidator, AwareDatetime

from api.errors import invalid
from vitalab.wire.topics import ID_PATTERN

QUERY_EARLIEST: Final = datetime(2000, 1, 1, tzinfo=UTC)
QUERY_LATEST: Final = datetime(2100, 1, 1, tzinfo=UTC)
WRITE_EARLIEST: Final = QUERY_EARLIEST
_T = TypeVar("_T", datetime, date)


def _query_time(t: datetime) -> datetime:
    if not QUERY_EARLIEST <= t < QUERY_LATEST:
        raise ValueError(
            f"{t.isoformat()} is outside {QUERY_EARLIEST.date().isoformat()} .. "
            f"{QUERY_LATEST.date().isoformat()}"
        )
    return t.astimezone(UTC)


def _query_day(d: date) -> date:
    if not QUERY_EARLIEST.date() <= d < QUERY_LATEST.date():
        raise ValueError(
            f"{d.isoformat()} is outside {QUERY_EARLIEST.date().isoformat()} .. "
            f"{QUERY_LATEST.date().isoformat()}"
        )
    return d


QueryTime = Annotated[AwareDatetime, AfterValidator(_query_time)]
"""A time with an offset within the query window (normalised to UTC)."""
QueryDay = Annotated[date, AfterValidator(_query_day)]

Since = Annotated[
    QueryTime | None,
    Query(description="from this time (inclusive), with an offset, e.g. 2026-11-25T09:00:00Z"),
]
SinceRequired = Annotated[
    QueryTime, Query(description="from this time (inclusive), with an offset, e.g. 2026-11-25T09:00:00Z")
]
Until = Annotated[QueryTime | None, Query(description="up to this time (exclusive), with an offset")]
SinceDay = Annotated[QueryDay | None, Query(description="from this day (inclusive)")]
UntilDay = Annotated[QueryDay | None, Query(description="up to this day (inclusive)")]

DeviceId = Annotated[str, Path(pattern=ID_PATTERN, description="a device id")]
SiteId = Annotated[str, Path(pattern=ID_PATTERN, description="a site id")]
DeviceFilter = Annotated[
    str | None, Query(pattern=ID_PATTERN, description="only this device (404 if unknown)")
]
SiteFilter = Annotated[str | None, Query(pattern=ID_PATTERN, description="only this site (404 if unknown)")]


def check_range(since: _T | None, until: _T | None, *, inclusive: bool = False) -> None:
    """422 when ``since`` is not before ``until`` (``inclusive`` ranges of days: when it is after)."""
    if since is None or until is None:
        return
    if since > until or (since == until and not inclusive):
        raise invalid("query.since", f"since {since.isoformat()} must be before until {until.isoformat()}")


def check_written(t: datetime, field: str, now: datetime, max_future_s: float) -> datetime:
    """A time a client writes: within ``[WRITE_EARLIEST, now + max_future_s]``, else 422 naming ``field``."""
    if t < WRITE_EARLIEST:
        raise invalid(field, f"{t.isoformat()} is before {WRITE_EARLIEST.date().isoformat()}")
    if t > now + timedelta(seconds=max_future_s):
        raise invalid(field, f"{t.isoformat()} is in the future (more than {max_future_s:g} s ahead)")
    return t.astimezone(UTC)
