"""What the ingester refused (``dead_letters``)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg import AsyncConnection, sql

from api.pagination import Cursor, Keyset, Page
from api.queries import fetch_page, in_sites

KEYSET = Keyset(("received_at", "id"), (datetime, int), descending=True)
"""Newest first; (received_at, id) is the primary key (many letters share a received_at)."""


@dataclass(frozen=True, slots=True)
class DeadLetterRow:
    id: int
    received_at: datetime
    topic: str
    reason: str
    detail: str
    path: str | None
    device_id: str | None
    payload_size: int
    payload: bytes


async def list_dead_letters(
    conn: AsyncConnection,
    reason: str | None,
    device_id: str | None,
    cursor: Cursor,
    limit: int,
    sites: list[str] | None = None,
) -> Page[DeadLetterRow]:
    """Newest first; ``sites``: only letters whose topic names one of these sites."""
    select = sql.SQL(
        "SELECT id, received_at, topic, reason, detail, path, device_id, payload_size, payload "
        "FROM dead_letters"
    )
    where = sql.SQL(
        "(%(r)s::text IS NULL OR reason = %(r)s) AND (%(d)s::text IS NULL OR device_id = %(d)s) AND {}"
    ).format(in_sites("split_part(topic, '/', 3)"))
    params: dict[str, Any] = {"r": reason, "d": device_id, "sites": sites}
    return await fetch_page(
        conn, DeadLetterRow, select, where, params, KEYSET, cursor, limit, lambda r: (r.received_at, r.id)
    )


async def device_dead_letters(
    conn: AsyncConnection,
    device_id: str,
    reason: str | None,
    since: datetime | None,
    cursor: Cursor,
    limit: int,
) -> Page[DeadLetterRow]:
    """One device's dead letters (those the ingester could name a device for), newest first, from
    ``since`` on (all with None)."""
    select = sql.SQL(
        "SELECT id, received_at, topic, reason, detail, path, device_id, payload_size, payload "
        "FROM dead_letters"
    )
    where = sql.SQL(
        "device_id = %(d)s AND (%(r)s::text IS NULL OR reason = %(r)s) "
        "AND (%(s)s::timestamptz IS NULL OR received_at >= %(s)s)"
    )
    params: dict[str, Any] = {"d": device_id, "r": reason, "s": since}
    return await fetch_page(
        conn, DeadLetterRow, select, where, params, KEYSET, cursor, limit, lambda r: (r.received_at, r.id)
    )
