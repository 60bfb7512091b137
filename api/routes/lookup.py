"""404 for an unknown device, site or participant, wherever one is named (path or filter)."""

from __future__ import annotations

from uuid import UUID

from psycopg import AsyncConnection

from api.errors import not_found
from api.queries import devices, participants, sites


async def require_device(conn: AsyncConnection, device_id: str | None, field: str) -> None:
    if device_id is not None and not await devices.known(conn, device_id):
        raise not_found("device", device_id, field=field)


async def require_site(conn: AsyncConnection, site_id: str | None, field: str) -> None:
    if site_id is not None and not await sites.known(conn, site_id):
        raise not_found("site", site_id, field=field)


async def require_participant(conn: AsyncConnection, participant_id: UUID | None, field: str) -> None:
    if participant_id is not None and not await participants.known(conn, participant_id):
        raise not_found("participant", str(participant_id), field=field)
