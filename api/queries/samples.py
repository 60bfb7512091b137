"""Samples and RR intervals (``samples``, ``rr_intervals``)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from psycopg import AsyncConnection, sql

from api.models import RrOut, SampleOut
from api.pagination import Cursor, Keyset, Page
from api.queries import cols, fetch_page, in_sites

SAMPLE_COLS = (
    "device_id",
    "t",
    "site_id",
    "seq",
    "received_at",
    "speed_kmh",
    "incline_pct",
    "distance_m",
    "energy_kcal",
    "power_w",
    "cadence_rpm",
    "stroke_rate_spm",
    "pace_s_per_500m",
    "hr_bpm",
    "elapsed_s",
    "resistance_level",
    "met",
)
KEYSET = Keyset(("t",), (datetime,))
"""One device's samples: (device_id, t) is the primary key, so t is unique within the device."""
LATEST_KEYSET = Keyset(("d.device_id",), (str,))
RR_KEYSET = Keyset(("t", "idx"), (datetime, int))

_RANGE = sql.SQL(
    "(%(since)s::timestamptz IS NULL OR t >= %(since)s) AND (%(until)s::timestamptz IS NULL OR t < %(until)s)"
)


async def device_samples(
    conn: AsyncConnection,
    device_id: str,
    since: datetime | None,
    until: datetime | None,
    cursor: Cursor,
    limit: int,
) -> Page[SampleOut]:
    select = sql.SQL("SELECT {} FROM samples").format(cols(SAMPLE_COLS))
    where = sql.SQL("device_id = %(d)s AND {}").format(_RANGE)
    params: dict[str, Any] = {"d": device_id, "since": since, "until": until}
    return await fetch_page(conn, SampleOut, select, where, params, KEYSET, cursor, limit, lambda s: (s.t,))


async def latest(
    conn: AsyncConnection, site: str | None, cursor: Cursor, limit: int, sites: list[str] | None = None
) -> Page[SampleOut]:
    """The newest sample of each device (one index probe per device), by device id (``sites``: only of
    these sites)."""
    select = sql.SQL(
        "SELECT s.* FROM devices d CROSS JOIN LATERAL "
        "(SELECT {} FROM samples WHERE samples.device_id = d.device_id ORDER BY t DESC LIMIT 1) s"
    ).format(cols(SAMPLE_COLS))
    where = sql.SQL("(%(site)s::text IS NULL OR d.site_id = %(site)s) AND {}").format(in_sites("d.site_id"))
    return await fetch_page(
        conn,
        SampleOut,
        select,
        where,
        {"site": site, "sites": sites},
        LATEST_KEYSET,
        cursor,
        limit,
        lambda s: (s.device_id,),
    )


async def rr(
    conn: AsyncConnection,
    device_id: str,
    since: datetime,
    until: datetime | None,
    cursor: Cursor,
    limit: int,
) -> Page[RrOut]:
    select = sql.SQL("SELECT t, idx, rr_ms FROM rr_intervals")
    where = sql.SQL("device_id = %(d)s AND {}").format(_RANGE)
    params: dict[str, Any] = {"d": device_id, "since": since, "until": until}
    return await fetch_page(
        conn, RrOut, select, where, params, RR_KEYSET, cursor, limit, lambda r: (r.t, r.idx)
    )
