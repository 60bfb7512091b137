"""Sites (timezone, opening hours) and the stored analytics behind the per-site reports (``sites``,
``devices``, ``device_hourly``, ``sessions``, ``participant_daily``)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from typing import Final
from uuid import UUID

from psycopg import AsyncConnection, sql

from analytics.opening_hours import SiteHours
from api.queries import exists, fetch_all


@dataclass(frozen=True, slots=True)
class SiteDevice:
    device_id: str
    kind: str | None


@dataclass(frozen=True, slots=True)
class DeviceHours:
    """One device's stored hours of a range: ``hours`` counts from the range's first hour."""

    device_id: str
    hours: list[int]
    in_session_s: list[float]
    minutes_with_data: list[int]


@dataclass(frozen=True, slots=True)
class SessionSpan:
    device_ids: list[str]
    participant_id: UUID | None
    start_s: float
    end_s: float
    """Seconds since the Unix epoch."""


@dataclass(frozen=True, slots=True)
class MemberWeek:
    participant_id: UUID
    sex: str | None
    birth_year: int | None
    week: date
    sessions: float
    load: float
    mvpa_min: float
    who_min: float


async def known(conn: AsyncConnection, site_id: str) -> bool:
    return await exists(conn, sql.SQL("SELECT 1 FROM sites WHERE site_id = %s"), (site_id,))


async def timezone(conn: AsyncConnection, site_id: str) -> str | None:
    cur = await conn.execute("SELECT timezone FROM sites WHERE site_id = %s", (site_id,))
    row = await cur.fetchone()
    return None if row is None else str(row[0])


DEVICES: Final = sql.SQL("SELECT device_id, kind FROM devices WHERE site_id = %s ORDER BY device_id")
SESSIONS_OVERLAPPING: Final = sql.SQL(
    "SELECT device_ids, participant_id, extract(epoch FROM started_at)::float8 AS start_s, "
    "extract(epoch FROM ended_at)::float8 AS end_s FROM sessions WHERE site_id = %s "
    "AND algorithm_version = %s AND started_at < %s AND ended_at >= %s"
)
MEMBER_WEEKS: Final = sql.SQL(
    "SELECT p.participant_id, p.sex, p.birth_year, date_trunc('week', d.day)::date AS week, "
    "sum(d.sessions)::float8 AS sessions, sum(d.load)::float8 AS load, "
    "sum(d.moderate_min + d.vigorous_min)::float8 AS mvpa_min, "
    "(sum(d.moderate_min) + 2 * sum(d.vigorous_min))::float8 AS who_min "
    "FROM participant_daily d JOIN participants p USING (participant_id) "
    "WHERE p.site_id = %s AND d.day >= %s AND d.day <= %s "
    "GROUP BY 1, 2, 3, 4 HAVING sum(d.sessions) > 0 ORDER BY 4, 1"
)
"""Per member of the site and ISO week of ``[since, until]`` with at least one session: its sums, in a total
order (week, member), so that the aggregates are the same bits wherever they are computed (the API, the site
exports of :mod:`api.exports.site`)."""


async def hours(conn: AsyncConnection, site_id: str) -> SiteHours:
    """The site's opening hours and timezone (an unknown site: always open, in UTC)."""
    cur = await conn.execute("SELECT timezone, opening_hours FROM sites WHERE site_id = %s", (site_id,))
    row = await cur.fetchone()
    return SiteHours() if row is None else SiteHours.stored(site_id, row[0], row[1])


async def devices(conn: AsyncConnection, site_id: str) -> list[SiteDevice]:
    return await fetch_all(conn, SiteDevice, DEVICES, (site_id,))


async def device_hours(conn: AsyncConnection, site_id: str, h0: datetime, h1: datetime) -> list[DeviceHours]:
    """Per device, its hours of ``[h0, h1)`` in ``device_hourly`` as arrays (a row per device, not per hour:
    a day of a hundred devices is a hundred rows)."""
    query = sql.SQL(
        "SELECT device_id, array_agg((extract(epoch FROM hour - %(h0)s) / 3600)::int) AS hours, "
        "array_agg(in_session_s) AS in_session_s, array_agg(minutes_with_data) AS minutes_with_data "
        "FROM device_hourly WHERE site_id = %(site)s AND hour >= %(h0)s AND hour < %(h1)s GROUP BY device_id"
    )
    return await fetch_all(conn, DeviceHours, query, {"site": site_id, "h0": h0, "h1": h1})


async def sessions_overlapping(
    conn: AsyncConnection, site_id: str, algorithm_version: str, t0: datetime, t1: datetime
) -> list[SessionSpan]:
    return await fetch_all(conn, SessionSpan, SESSIONS_OVERLAPPING, (site_id, algorithm_version, t1, t0))


async def member_weeks(conn: AsyncConnection, site_id: str, since: date, until: date) -> list[MemberWeek]:
    """Per member of the site and ISO week of ``[since, until]`` with at least one session: its sums."""
    return await fetch_all(conn, MemberWeek, MEMBER_WEEKS, (site_id, since, until))
