"""404 for an unknown device, site or participant, wherever one is named (path or filter), and for one out
of the caller's scope: the same answer, from the same check, so a caller cannot tell the two apart (the scope
checks of api/policy.py's table)."""

from __future__ import annotations

from uuid import UUID

from psycopg import AsyncConnection

from api.errors import not_found
from api.policy import sees_participants
from api.queries import participants
from api.queries import scope as lookups
from api.security import Caller


def sees_site(caller: Caller, site_id: str | None) -> bool:
    return site_id is not None and caller.can_site(site_id)


async def require_device(conn: AsyncConnection, device_id: str | None, field: str, caller: Caller) -> None:
    if device_id is None:
        return
    sites = await lookups.device_sites(conn, device_id)
    if not any(caller.can_site(s) for s in sites):
        raise not_found("device", device_id, field=field)


async def require_letters_device(
    conn: AsyncConnection, device_id: str | None, field: str, caller: Caller
) -> None:
    """A device that is registered or named by dead letters (a refused device need not be registered)."""
    if device_id is None:
        return
    sites = await lookups.letters_device_sites(conn, device_id)
    if not any(caller.can_site(s) for s in sites):
        raise not_found("device", device_id, field=field)


async def require_site(conn: AsyncConnection, site_id: str | None, field: str, caller: Caller) -> None:
    if site_id is not None and not (caller.can_site(site_id) and await lookups.site_known(conn, site_id)):
        raise not_found("site", site_id, field=field)


async def require_participant(
    conn: AsyncConnection, participant_id: UUID | None, field: str, caller: Caller
) -> None:
    """Participants are in scope for roles that see participant ids, at the caller's sites."""
    if participant_id is None:
        return
    if not (
        sees_participants(caller) and sees_site(caller, await participants.site_of(conn, participant_id))
    ):
        raise not_found("participant", str(participant_id), field=field)
