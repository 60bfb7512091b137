"""Fleet health and maintenance: each device's state and counters, alerts, services, service thresholds,
and alert webhooks (``devices``, ``device_counters``, ``service_thresholds``, ``alerts``,
``device_services``, ``site_webhooks``; written by analytics/fleet.py)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from psycopg import AsyncConnection, sql

from api.pagination import Cursor, Keyset, Page
from api.queries import fetch_all, fetch_one, fetch_page


@contextlib.asynccontextmanager
async def _committed(conn: AsyncConnection) -> AsyncIterator[None]:
    """A write committed when the block ends (before the answer goes out), also after reads of the same
    request (where ``conn.transaction()`` would only be a savepoint of the request's open transaction)."""
    try:
        yield
    except BaseException:
        await conn.rollback()
        raise
    await conn.commit()


ALERTS_KEYSET = Keyset(("started_at", "alert_id"), (datetime, int), descending=True)


@dataclass(frozen=True, slots=True)
class FleetRow:
    device_id: str
    kind: str | None
    vendor: str | None
    model: str | None
    firmware: str | None
    transport: str | None
    quarantined: bool
    online: bool
    last_heard: datetime | None
    last_seen: datetime | None
    battery_pct: float | None
    training: str | None
    errors: list[str]
    distance_m: float | None
    running_s: float | None
    service_distance_m: float | None
    service_running_s: float | None
    last_service_at: datetime | None
    counted_at: datetime | None
    threshold_km: float | None
    threshold_hours: float | None
    alerts: list[str]


# online: not said to be offline and heard of (sample or state) since %(heard_since)s (as GET /v1/devices)
_FLEET = sql.SQL(
    """
SELECT d.device_id, d.kind, d.vendor, d.model, d.firmware, d.transport, d.quarantined,
       coalesce(coalesce(d.online, true) AND greatest(d.last_seen, d.state_at) >= %(heard_since)s, false)
           AS online,
       greatest(d.last_seen, d.state_at) AS last_heard, d.last_seen, d.battery_pct, d.training, d.errors,
       c.distance_m, c.running_s, c.service_distance_m, c.service_running_s, c.last_service_at,
       c.computed_at AS counted_at, t.km AS threshold_km, t.hours AS threshold_hours,
       coalesce(a.kinds, '{}') AS alerts
FROM devices d
LEFT JOIN device_counters c ON c.device_id = d.device_id
LEFT JOIN LATERAL (
    SELECT km, hours FROM service_thresholds
    WHERE kind = d.kind AND model IN (coalesce(d.model, '*'), '*') ORDER BY model = '*' LIMIT 1
) t ON true
LEFT JOIN LATERAL (
    SELECT array_agg(kind ORDER BY kind) AS kinds FROM alerts
    WHERE site_id = d.site_id AND subject = 'device' AND subject_id = d.device_id AND ended_at IS NULL
) a ON true
WHERE d.site_id = %(site)s
ORDER BY d.device_id
"""
)


async def fleet(conn: AsyncConnection, site_id: str, now: datetime, offline_after_s: float) -> list[FleetRow]:
    """Every device of the site with its state, counters, thresholds and open alerts, by id."""
    params = {"site": site_id, "heard_since": now - timedelta(seconds=offline_after_s)}
    return await fetch_all(conn, FleetRow, _FLEET, params)


@dataclass(frozen=True, slots=True)
class AlertRow:
    alert_id: int
    site_id: str
    subject: str
    subject_id: str
    kind: str
    started_at: datetime
    ended_at: datetime | None
    detail: dict[str, Any]


_ALERTS = sql.SQL(
    "SELECT alert_id, site_id, subject, subject_id, kind, started_at, ended_at, detail FROM alerts"
)


async def alerts(
    conn: AsyncConnection,
    site_id: str,
    active: bool | None,
    since: datetime | None,
    until: datetime | None,
    cursor: Cursor,
    limit: int,
) -> Page[AlertRow]:
    """The site's alerts, newest first: ``active`` True only open ones, False only ended ones; overlapping
    ``[since, until)`` when given."""
    # the state as a literal condition: the open ones are read from their partial index (migration 0013)
    state = {None: "true", True: "ended_at IS NULL", False: "ended_at IS NOT NULL"}[active]
    where = sql.SQL(
        "site_id = %(site)s AND {} "
        "AND (%(since)s::timestamptz IS NULL OR ended_at IS NULL OR ended_at > %(since)s) "
        "AND (%(until)s::timestamptz IS NULL OR started_at < %(until)s)"
    ).format(sql.SQL(state))
    params = {"site": site_id, "since": since, "until": until}
    return await fetch_page(
        conn,
        AlertRow,
        _ALERTS,
        where,
        params,
        ALERTS_KEYSET,
        cursor,
        limit,
        lambda a: (a.started_at, a.alert_id),
    )


@dataclass(frozen=True, slots=True)
class ServiceRow:
    service_id: int
    device_id: str
    serviced_at: datetime
    note: str | None
    recorded_at: datetime
    recorded_by: str | None


async def record_service(
    conn: AsyncConnection,
    device_id: str,
    serviced_at: datetime,
    note: str | None,
    recorded_at: datetime,
    recorded_by: str | None,
) -> ServiceRow:
    """Record a service and reset the device's counters since its service at once (the analytics job
    recounts what came after ``serviced_at`` on its next run); committed before it returns."""
    async with _committed(conn):
        row = await fetch_one(
            conn,
            ServiceRow,
            sql.SQL(
                "INSERT INTO device_services (device_id, serviced_at, note, recorded_at, recorded_by) "
                "VALUES (%s, %s, %s, %s, %s) "
                "RETURNING service_id, device_id, serviced_at, note, recorded_at, recorded_by"
            ),
            (device_id, serviced_at, note, recorded_at, recorded_by),
        )
        await conn.execute(
            "UPDATE device_counters SET service_distance_m = 0, service_running_s = 0, last_service_at = %s "
            "WHERE device_id = %s AND (last_service_at IS NULL OR last_service_at <= %s)",
            (serviced_at, device_id, serviced_at),
        )
    assert row is not None
    return row


@dataclass(frozen=True, slots=True)
class ThresholdRow:
    kind: str
    model: str
    km: float | None
    hours: float | None


async def thresholds(conn: AsyncConnection) -> list[ThresholdRow]:
    query = sql.SQL("SELECT kind, model, km, hours FROM service_thresholds ORDER BY kind, model")
    return await fetch_all(conn, ThresholdRow, query)


async def set_threshold(
    conn: AsyncConnection, kind: str, model: str, km: float | None, hours: float | None
) -> ThresholdRow | None:
    """Set (or, with neither ``km`` nor ``hours``, remove) the threshold of a kind and model; the row as it
    is now (None: removed)."""
    async with _committed(conn):
        if km is None and hours is None:
            await conn.execute("DELETE FROM service_thresholds WHERE kind = %s AND model = %s", (kind, model))
            return None
        return await fetch_one(
            conn,
            ThresholdRow,
            sql.SQL(
                "INSERT INTO service_thresholds (kind, model, km, hours) VALUES (%s, %s, %s, %s) "
                "ON CONFLICT (kind, model) DO UPDATE SET km = EXCLUDED.km, hours = EXCLUDED.hours "
                "RETURNING kind, model, km, hours"
            ),
            (kind, model, km, hours),
        )


@dataclass(frozen=True, slots=True)
class WebhookRow:
    url: str
    updated_at: datetime


async def webhook(conn: AsyncConnection, site_id: str) -> WebhookRow | None:
    query = sql.SQL("SELECT url, updated_at FROM site_webhooks WHERE site_id = %s")
    return await fetch_one(conn, WebhookRow, query, (site_id,))


async def set_webhook(conn: AsyncConnection, site_id: str, url: str | None, now: datetime) -> None:
    """Set the site's webhook, or remove it (``url`` None)."""
    async with _committed(conn):
        if url is None:
            await conn.execute("DELETE FROM site_webhooks WHERE site_id = %s", (site_id,))
            return
        await conn.execute(
            "INSERT INTO site_webhooks (site_id, url, updated_at) VALUES (%s, %s, %s) "
            "ON CONFLICT (site_id) DO UPDATE SET url = EXCLUDED.url, updated_at = EXCLUDED.updated_at",
            (site_id, url, now),
        )


async def gateways(conn: AsyncConnection, site_id: str) -> list[tuple[str, bool, datetime | None]]:
    """(gateway_id, online, last_seen) of the site's gateways, by id."""
    cur = await conn.execute(
        "SELECT gateway_id, online, last_seen FROM gateways WHERE site_id = %s ORDER BY gateway_id",
        (site_id,),
    )
    return [(str(r[0]), bool(r[1]), r[2]) for r in await cur.fetchall()]
