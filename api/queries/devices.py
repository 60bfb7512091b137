"""Devices, and their data quality per day (``devices``, ``device_quality_daily``)."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Any

from psycopg import AsyncConnection, sql

from api.models import Device, DeviceQualityDay
from api.pagination import Cursor, Keyset, Page
from api.queries import cols, exists, fetch_one, fetch_page, in_sites
from vitalab.db.columns import QUALITY_VALUES

KEYSET = Keyset(("device_id",), (str,))
QUALITY_KEYSET = Keyset(("day",), (date,))

# online: not said to be offline (state or last will) and heard of (sample or state) since %(heard_since)s
_SELECT = sql.SQL(
    "SELECT device_id, site_id, kind, vendor, model, firmware, transport, "
    "coalesce(coalesce(online, true) AND greatest(last_seen, state_at) >= %(heard_since)s, false) AS online, "
    "greatest(last_seen, state_at) AS last_heard, training, first_seen, last_seen FROM devices"
)
_QUALITY_COLS = ("day", *QUALITY_VALUES)


def _heard_since(now: datetime, offline_after_s: float) -> datetime:
    return now - timedelta(seconds=offline_after_s)


async def known(conn: AsyncConnection, device_id: str) -> bool:
    return await exists(conn, sql.SQL("SELECT 1 FROM devices WHERE device_id = %s"), (device_id,))


async def list_devices(
    conn: AsyncConnection,
    site: str | None,
    now: datetime,
    offline_after_s: float,
    cursor: Cursor,
    limit: int,
    sites: list[str] | None = None,
) -> Page[Device]:
    """Devices by id (``sites``: only of these sites; None: of all)."""
    params: dict[str, Any] = {
        "site": site,
        "heard_since": _heard_since(now, offline_after_s),
        "sites": sites,
    }
    where = sql.SQL("(%(site)s::text IS NULL OR site_id = %(site)s) AND {}").format(in_sites("site_id"))
    return await fetch_page(
        conn, Device, _SELECT, where, params, KEYSET, cursor, limit, lambda d: (d.device_id,)
    )


async def get_device(
    conn: AsyncConnection, device_id: str, now: datetime, offline_after_s: float
) -> Device | None:
    query = sql.SQL("{} WHERE device_id = %(d)s").format(_SELECT)
    return await fetch_one(
        conn, Device, query, {"d": device_id, "heard_since": _heard_since(now, offline_after_s)}
    )


async def quality(
    conn: AsyncConnection, device_id: str, since: date | None, until: date | None, cursor: Cursor, limit: int
) -> Page[DeviceQualityDay]:
    select = sql.SQL("SELECT {} FROM device_quality_daily").format(cols(_QUALITY_COLS))
    where = sql.SQL(
        "device_id = %(d)s AND (%(since)s::date IS NULL OR day >= %(since)s) "
        "AND (%(until)s::date IS NULL OR day <= %(until)s)"
    )
    params = {"d": device_id, "since": since, "until": until}
    return await fetch_page(
        conn, DeviceQualityDay, select, where, params, QUALITY_KEYSET, cursor, limit, lambda q: (q.day,)
    )
