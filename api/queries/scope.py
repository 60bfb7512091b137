"""Where a named resource belongs, for the guard's scope checks (:mod:`api.guard`)."""

from __future__ import annotations

from uuid import UUID

from psycopg import AsyncConnection


async def _texts(conn: AsyncConnection, query: str, params: tuple[object, ...]) -> list[str]:
    cur = await conn.execute(query, params)
    return [str(r[0]) for r in await cur.fetchall()]


async def device_sites(conn: AsyncConnection, device_id: str) -> list[str]:
    """The site of a registered device ([] if unknown)."""
    return await _texts(conn, "SELECT site_id FROM devices WHERE device_id = %s", (device_id,))


async def letters_device_sites(conn: AsyncConnection, device_id: str) -> list[str]:
    """The sites of a device named by dead letters: its registered site, else the sites of its letters'
    topics (``vitalab/v1/{site}/...``)."""
    found = await device_sites(conn, device_id)
    if found:
        return found
    return await _texts(
        conn,
        "SELECT DISTINCT split_part(topic, '/', 3) FROM dead_letters WHERE device_id = %s",
        (device_id,),
    )


async def session_sites(conn: AsyncConnection, session_id: int) -> list[str]:
    return await _texts(conn, "SELECT site_id FROM sessions WHERE session_id = %s", (session_id,))


async def participant_site(conn: AsyncConnection, participant_id: UUID) -> str | None:
    found = await _texts(
        conn, "SELECT site_id FROM participants WHERE participant_id = %s", (participant_id,)
    )
    return found[0] if found else None


async def site_known(conn: AsyncConnection, site_id: str) -> bool:
    return bool(await _texts(conn, "SELECT site_id FROM sites WHERE site_id = %s", (site_id,)))
