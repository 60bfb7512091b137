"""Sites as admins set them up, and the registration of devices and gateways (``sites``, ``devices``,
``gateways``; migration 0007)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Final

from psycopg import AsyncConnection, sql
from psycopg.types.json import Jsonb

from analytics.opening_hours import Weekday
from api.pagination import Cursor, Keyset, Page
from api.queries import fetch_all, fetch_one, fetch_page, in_sites
from api.site_models import RegisteredDevice, RegisteredGateway, SiteOut

SITE_KEYSET: Final = Keyset(("site_id",), (str,))
DEVICE_KEYSET: Final = Keyset(("device_id",), (str,))
GATEWAY_KEYSET: Final = Keyset(("gateway_id",), (str,))

_SITE = sql.SQL("SELECT site_id, name, timezone, opening_hours, created_at FROM sites")
_SITE_COLS = sql.SQL("site_id, name, timezone, opening_hours, created_at")
_DEVICE_COLS = sql.SQL("device_id, site_id, kind, vendor, model, gateway_id, registered_at, retired_at")
_GATEWAYS = sql.SQL(
    "SELECT * FROM (SELECT g.gateway_id, g.site_id, "
    "coalesce(array_agg(d.device_id ORDER BY d.device_id) FILTER (WHERE d.device_id IS NOT NULL), '{}') "
    "AS devices, g.registered_at, g.retired_at FROM gateways g LEFT JOIN devices d "
    "ON d.gateway_id = g.gateway_id AND d.retired_at IS NULL AND d.registered_at IS NOT NULL "
    "GROUP BY g.gateway_id) gw"
)


Hours = Mapping[Weekday, Sequence[Sequence[str]]]
"""Checked opening hours (analytics.opening_hours)."""


def _hours(hours: Hours | None) -> Jsonb | None:
    return None if hours is None else Jsonb(hours)


# --- sites ------------------------------------------------------------------------------------------------


async def insert_site(
    conn: AsyncConnection,
    site_id: str,
    name: str | None,
    timezone: str,
    hours: Hours | None,
    now: datetime,
) -> SiteOut | None:
    """The new site; None when the id is taken."""
    query = sql.SQL(
        "INSERT INTO sites (site_id, name, timezone, opening_hours, created_at) VALUES (%s, %s, %s, %s, %s) "
        "ON CONFLICT (site_id) DO NOTHING RETURNING {}"
    ).format(_SITE_COLS)
    return await fetch_one(conn, SiteOut, query, (site_id, name, timezone, _hours(hours), now))


async def get_site(conn: AsyncConnection, site_id: str) -> SiteOut | None:
    return await fetch_one(conn, SiteOut, sql.SQL("{} WHERE site_id = %s").format(_SITE), (site_id,))


async def list_sites(
    conn: AsyncConnection, sites: list[str] | None, cursor: Cursor, limit: int
) -> Page[SiteOut]:
    """Sites by id (``sites``: only these; None: all)."""
    return await fetch_page(
        conn,
        SiteOut,
        _SITE,
        in_sites("site_id"),
        {"sites": sites},
        SITE_KEYSET,
        cursor,
        limit,
        lambda s: (s.site_id,),
    )


async def update_site(conn: AsyncConnection, site_id: str, changes: dict[str, Any]) -> SiteOut | None:
    """Set ``changes`` (column -> value; ``opening_hours`` as checked hours) on the site; None: no such
    site."""
    values = {k: _hours(v) if k == "opening_hours" else v for k, v in changes.items()}
    if not values:
        return await get_site(conn, site_id)
    assignments = sql.SQL(", ").join(
        sql.SQL("{} = {}").format(sql.Identifier(k), sql.Placeholder(k)) for k in values
    )
    query = sql.SQL("UPDATE sites SET {} WHERE site_id = %(site_id)s RETURNING {}").format(
        assignments, _SITE_COLS
    )
    return await fetch_one(conn, SiteOut, query, {**values, "site_id": site_id})


# --- devices ----------------------------------------------------------------------------------------------


async def device_for_update(conn: AsyncConnection, device_id: str) -> RegisteredDevice | None:
    """The device's row, locked until the transaction ends (registration, retirement and rotation of one
    device are serialised)."""
    query = sql.SQL("SELECT {} FROM devices WHERE device_id = %s FOR UPDATE").format(_DEVICE_COLS)
    return await fetch_one(conn, RegisteredDevice, query, (device_id,))


async def register_device(
    conn: AsyncConnection,
    device_id: str,
    site_id: str,
    kind: str,
    vendor: str | None,
    model: str | None,
    gateway_id: str | None,
    now: datetime,
) -> RegisteredDevice | None:
    """Register a device at ``site_id``: a new row, or the row of a device of that site heard of before or
    retired (registered again). None: the id belongs to another site."""
    query = sql.SQL(
        "INSERT INTO devices AS d (device_id, site_id, kind, vendor, model, gateway_id, registered_at) "
        "VALUES (%(d)s, %(s)s, %(k)s, %(v)s, %(m)s, %(g)s, %(now)s) "
        "ON CONFLICT (device_id) DO UPDATE SET kind = EXCLUDED.kind, vendor = EXCLUDED.vendor, "
        "model = EXCLUDED.model, gateway_id = EXCLUDED.gateway_id, registered_at = EXCLUDED.registered_at, "
        "retired_at = NULL WHERE d.site_id = EXCLUDED.site_id RETURNING {}"
    ).format(_DEVICE_COLS)
    params = {"d": device_id, "s": site_id, "k": kind, "v": vendor, "m": model, "g": gateway_id, "now": now}
    return await fetch_one(conn, RegisteredDevice, query, params)


async def retire_device(conn: AsyncConnection, device_id: str, now: datetime) -> RegisteredDevice | None:
    query = sql.SQL(
        "UPDATE devices SET retired_at = greatest(%(now)s, registered_at) WHERE device_id = %(d)s "
        "RETURNING {}"
    ).format(_DEVICE_COLS)
    return await fetch_one(conn, RegisteredDevice, query, {"d": device_id, "now": now})


async def list_devices(
    conn: AsyncConnection, site_id: str, cursor: Cursor, limit: int
) -> Page[RegisteredDevice]:
    """The site's devices by id, registered or only heard of, retired ones included."""
    return await fetch_page(
        conn,
        RegisteredDevice,
        sql.SQL("SELECT {} FROM devices").format(_DEVICE_COLS),
        sql.SQL("site_id = %(s)s"),
        {"s": site_id},
        DEVICE_KEYSET,
        cursor,
        limit,
        lambda d: (d.device_id,),
    )


async def devices_for_update(conn: AsyncConnection, device_ids: list[str]) -> list[RegisteredDevice]:
    query = sql.SQL("SELECT {} FROM devices WHERE device_id = ANY(%s) ORDER BY device_id FOR UPDATE").format(
        _DEVICE_COLS
    )
    return await fetch_all(conn, RegisteredDevice, query, (device_ids,))


async def attach(conn: AsyncConnection, gateway_id: str, device_ids: list[str]) -> None:
    await conn.execute(
        "UPDATE devices SET gateway_id = %s WHERE device_id = ANY(%s)", (gateway_id, device_ids)
    )


# --- gateways ---------------------------------------------------------------------------------------------


async def gateway(conn: AsyncConnection, gateway_id: str, *, lock: bool = False) -> RegisteredGateway | None:
    """The gateway with its attached (registered, not retired) devices; ``lock``: its row is locked until the
    transaction ends."""
    query = sql.SQL("{} WHERE gateway_id = %s").format(_GATEWAYS)
    if lock:
        await conn.execute("SELECT 1 FROM gateways WHERE gateway_id = %s FOR UPDATE", (gateway_id,))
    return await fetch_one(conn, RegisteredGateway, query, (gateway_id,))


async def register_gateway(conn: AsyncConnection, gateway_id: str, site_id: str, now: datetime) -> bool:
    """Register a gateway at ``site_id`` (new, heard of before, or retired); False: the id belongs to another
    site."""
    cur = await conn.execute(
        "INSERT INTO gateways AS g (gateway_id, site_id, registered_at) VALUES (%(g)s, %(s)s, %(now)s) "
        "ON CONFLICT (gateway_id) DO UPDATE SET registered_at = EXCLUDED.registered_at, retired_at = NULL "
        "WHERE g.site_id = EXCLUDED.site_id RETURNING gateway_id",
        {"g": gateway_id, "s": site_id, "now": now},
    )
    return await cur.fetchone() is not None


async def retire_gateway(conn: AsyncConnection, gateway_id: str, now: datetime) -> None:
    await conn.execute(
        "UPDATE gateways SET retired_at = greatest(%(now)s, registered_at) WHERE gateway_id = %(g)s",
        {"g": gateway_id, "now": now},
    )


async def list_gateways(
    conn: AsyncConnection, site_id: str, cursor: Cursor, limit: int
) -> Page[RegisteredGateway]:
    return await fetch_page(
        conn,
        RegisteredGateway,
        _GATEWAYS,
        sql.SQL("site_id = %(s)s"),
        {"s": site_id},
        GATEWAY_KEYSET,
        cursor,
        limit,
        lambda g: (g.gateway_id,),
    )
