"""What the contract validation and the integrator's views need from the database: whether the ingester
takes a device's messages (its site; its ``quarantine`` policy) and which site a device belongs to."""

from __future__ import annotations

from dataclasses import dataclass

from psycopg import AsyncConnection, sql

from api.queries import fetch_one


@dataclass(frozen=True, slots=True)
class SiteRow:
    site_id: str


@dataclass(frozen=True, slots=True)
class RegistryRow:
    site_id: str
    accepted: bool
    """Not quarantined, not retired: in the ingester's set of known devices under the quarantine policy."""


async def device_registry(conn: AsyncConnection, device_id: str) -> RegistryRow | None:
    """What the ingester knows of a device: its site, and whether it takes it (None: not in its registry)."""
    query = sql.SQL(
        "SELECT site_id, NOT quarantined AND retired_at IS NULL AS accepted "
        "FROM devices WHERE device_id = %(d)s"
    )
    return await fetch_one(conn, RegistryRow, query, {"d": device_id})


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
