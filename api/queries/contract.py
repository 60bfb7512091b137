"""What the contract validation and the integrator's views need from the database: whether the ingester
takes a device's telemetry (its ``quarantine`` policy) and which site a device belongs to."""

from __future__ import annotations

from dataclasses import dataclass

from psycopg import AsyncConnection, sql

from api.queries import exists, fetch_one


@dataclass(frozen=True, slots=True)
class SiteRow:
    site_id: str


async def accepted_device(conn: AsyncConnection, device_id: str) -> bool:
    """Registered and not quarantined: the ingester's set of known devices under the quarantine policy."""
    query = sql.SQL("SELECT 1 FROM devices WHERE device_id = %(d)s AND NOT quarantined")
    return await exists(conn, query, {"d": device_id})


async def device_site(conn: AsyncConnection, device_id: str) -> str | None:
    """The site of a registered device; for a device only dead letters name (refused before it was
    registered), the site of the topic of its newest dead letter. None: never heard of."""
    query = sql.SQL(
        "SELECT site_id FROM ("
        "SELECT 0 AS k, site_id FROM devices WHERE device_id = %(d)s "
        "UNION ALL (SELECT 1, split_part(topic, '/', 3) FROM dead_letters WHERE device_id = %(d)s "
        "ORDER BY received_at DESC, id DESC LIMIT 1)) s ORDER BY k LIMIT 1"
    )
    row = await fetch_one(conn, SiteRow, query, {"d": device_id})
    return None if row is None else row.site_id
