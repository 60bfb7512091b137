"""Check-ins: a participant on (or wearing) a device over time (``device_assignments``). The rules that
combine these statements live in :mod:`api.services.check_ins`."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from psycopg import AsyncConnection, sql

from api.models import CheckInOut
from api.pagination import Cursor, Keyset, Page
from api.queries import cols, fetch_one, fetch_page

_COLS = cols(("device_id", "participant_id", "started_at", "ended_at"))
KEYSET = Keyset(("started_at", "device_id"), (datetime, str))
"""(device_id, started_at) is the primary key: (started_at, device_id) is unique."""


async def lock_device(conn: AsyncConnection, device_id: str) -> str | None:
    """The device's site, its row locked until the transaction ends (serialises a device's check-ins)."""
    cur = await conn.execute("SELECT site_id FROM devices WHERE device_id = %s FOR UPDATE", (device_id,))
    row = await cur.fetchone()
    return None if row is None else str(row[0])


async def starting_at(conn: AsyncConnection, device_id: str, started_at: datetime) -> CheckInOut | None:
    query = sql.SQL("SELECT {} FROM device_assignments WHERE device_id = %s AND started_at = %s").format(
        _COLS
    )
    return await fetch_one(conn, CheckInOut, query, (device_id, started_at))


async def open_one(conn: AsyncConnection, device_id: str) -> CheckInOut | None:
    query = sql.SQL(
        "SELECT {} FROM device_assignments WHERE device_id = %s AND ended_at IS NULL "
        "ORDER BY started_at DESC LIMIT 1"
    ).format(_COLS)
    return await fetch_one(conn, CheckInOut, query, (device_id,))


async def last(conn: AsyncConnection, device_id: str) -> CheckInOut | None:
    query = sql.SQL(
        "SELECT {} FROM device_assignments WHERE device_id = %s ORDER BY started_at DESC LIMIT 1"
    ).format(_COLS)
    return await fetch_one(conn, CheckInOut, query, (device_id,))


async def overlapping(
    conn: AsyncConnection, device_id: str, started_at: datetime, ended_at: datetime | None
) -> CheckInOut | None:
    """The first check-in of the device overlapping ``[started_at, ended_at)`` (open: to infinity)."""
    query = sql.SQL(
        "SELECT {} FROM device_assignments WHERE device_id = %s "
        "AND started_at < coalesce(%s, 'infinity'::timestamptz) "
        "AND coalesce(ended_at, 'infinity'::timestamptz) > %s ORDER BY started_at LIMIT 1"
    ).format(_COLS)
    return await fetch_one(conn, CheckInOut, query, (device_id, ended_at, started_at))


async def starting_between(
    conn: AsyncConnection, device_id: str, after: datetime, before: datetime
) -> CheckInOut | None:
    query = sql.SQL(
        "SELECT {} FROM device_assignments WHERE device_id = %s AND started_at > %s AND started_at < %s "
        "ORDER BY started_at LIMIT 1"
    ).format(_COLS)
    return await fetch_one(conn, CheckInOut, query, (device_id, after, before))


async def insert(
    conn: AsyncConnection,
    device_id: str,
    participant_id: UUID,
    started_at: datetime,
    ended_at: datetime | None,
) -> CheckInOut:
    query = sql.SQL("INSERT INTO device_assignments ({}) VALUES (%s, %s, %s, %s) RETURNING {}").format(
        _COLS, _COLS
    )
    created = await fetch_one(conn, CheckInOut, query, (device_id, participant_id, started_at, ended_at))
    assert created is not None  # INSERT ... RETURNING returns the row or raises
    return created


async def end(
    conn: AsyncConnection, device_id: str, started_at: datetime, ended_at: datetime
) -> CheckInOut | None:
    query = sql.SQL(
        "UPDATE device_assignments SET ended_at = %s WHERE device_id = %s AND started_at = %s RETURNING {}"
    ).format(_COLS)
    return await fetch_one(conn, CheckInOut, query, (ended_at, device_id, started_at))


async def list_check_ins(
    conn: AsyncConnection,
    *,
    device: str | None,
    participant: UUID | None,
    since: datetime | None,
    until: datetime | None,
    cursor: Cursor,
    limit: int,
    sites: list[str] | None = None,
) -> Page[CheckInOut]:
    """Check-ins overlapping ``[since, until)`` (either bound optional), by start; ``sites``: only on
    devices of these sites."""
    select = sql.SQL("SELECT {} FROM device_assignments").format(_COLS)
    where = sql.SQL(
        "(%(d)s::text IS NULL OR device_id = %(d)s) AND (%(p)s::uuid IS NULL OR participant_id = %(p)s) "
        "AND (%(since)s::timestamptz IS NULL OR ended_at IS NULL OR ended_at > %(since)s) "
        "AND (%(until)s::timestamptz IS NULL OR started_at < %(until)s) "
        "AND (%(sites)s::text[] IS NULL OR device_id IN "
        "(SELECT device_id FROM devices WHERE site_id = ANY(%(sites)s)))"
    )
    params: dict[str, Any] = {"d": device, "p": participant, "since": since, "until": until, "sites": sites}
    return await fetch_page(
        conn, CheckInOut, select, where, params, KEYSET, cursor, limit, lambda c: (c.started_at, c.device_id)
    )
