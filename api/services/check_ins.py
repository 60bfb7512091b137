"""Check-ins: a participant on (or wearing) a device from ``started_at`` to ``ended_at`` (the
``device_assignments`` table, which the analytics job reads to name a session's participant and to join a
participant's strap with the machine they use).

Rules, per device (its row is locked, so concurrent requests for one device are serialised):

* a new check-in closes the device's open check-in at its ``started_at`` (the next member took the
  machine); the same participant checking in again on the device they are checked in on changes nothing
  (200, "already checked in");
* the same request again (same device, participant and ``started_at``) answers 200 with what is stored,
  so a kiosk may retry after a connection error;
* a check-in may not overlap another one of the device (409), nor start before 2000 or more than
  ``max_future_s`` ahead of the server's clock, nor name a participant of another site (422);
* ending needs an open check-in (409 without one, unless the device's last check-in already ended at exactly
  the requested time: a retried request, 200).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

from psycopg import AsyncConnection

from api.errors import conflict, invalid, not_found
from api.models import CheckInIn, CheckInOut, CheckOutIn
from api.params import check_written
from api.policy import sees_participants
from api.queries import check_ins as q
from api.queries import participants
from api.security import Caller


@dataclass(frozen=True, slots=True)
class Outcome:
    check_in: CheckInOut
    created: bool


def _span(c: CheckInOut) -> str:
    return f"from {c.started_at.isoformat()} to {c.ended_at.isoformat() if c.ended_at else 'now (open)'}"


async def _device_site(conn: AsyncConnection, device_id: str, field: str, caller: Caller) -> str:
    """The device's site, locked; 404 for an unknown device and for one out of the caller's scope alike."""
    site = await q.lock_device(conn, device_id)
    if site is None or not caller.can_site(site):
        raise not_found("device", device_id, field=field)
    return site


async def check_in(
    conn: AsyncConnection, body: CheckInIn, now: datetime, max_future_s: float, caller: Caller
) -> Outcome:
    """Check a participant in on a device (rules in the module docstring), for ``caller`` (devices and
    participants out of its scope are unknown to it)."""
    started = check_written(body.started_at or now, "body.started_at", now, max_future_s)
    ended = (
        None if body.ended_at is None else check_written(body.ended_at, "body.ended_at", now, max_future_s)
    )
    if ended is not None and ended <= started:
        raise invalid("body.ended_at", "ended_at must be after started_at")
    async with conn.transaction():
        site = await _device_site(conn, body.device_id, "body.device_id", caller)
        their_site = await participants.site_of(conn, body.participant_id)
        if their_site is None or not (sees_participants(caller) and caller.can_site(their_site)):
            raise not_found("participant", str(body.participant_id), field="body.participant_id")
        if their_site != site:
            raise invalid(
                "body.participant_id",
                f"participant {body.participant_id} is registered at site {their_site!r}, "
                f"device {body.device_id!r} is at site {site!r}",
            )
        same = await q.starting_at(conn, body.device_id, started)
        if same is not None:
            return await _again(conn, same, body.participant_id, ended)
        current = await q.open_one(conn, body.device_id)
        if current is not None and current.started_at < started:
            if current.participant_id == body.participant_id and ended is None:
                return Outcome(current, created=False)  # already checked in
            await q.end(conn, body.device_id, current.started_at, started)
        clash = await q.overlapping(conn, body.device_id, started, ended)
        if clash is not None:
            raise conflict(
                f"device {body.device_id!r} has a check-in of {clash.participant_id} {_span(clash)} "
                "overlapping this one"
            )
        return Outcome(
            await q.insert(conn, body.device_id, body.participant_id, started, ended), created=True
        )


async def _again(
    conn: AsyncConnection, same: CheckInOut, participant_id: UUID, ended: datetime | None
) -> Outcome:
    """A check-in with the device and start of a stored one: the same again (200) or a conflict."""
    if same.participant_id != participant_id:
        raise conflict(
            f"device {same.device_id!r} has a check-in of another participant at "
            f"{same.started_at.isoformat()}"
        )
    if ended is None or ended == same.ended_at:
        return Outcome(same, created=False)
    if same.ended_at is not None:
        raise conflict(
            f"this check-in already ended at {same.ended_at.isoformat()}, not {ended.isoformat()}",
            field="body.ended_at",
        )
    if await q.starting_between(conn, same.device_id, same.started_at, ended) is not None:
        raise conflict("a later check-in of the device starts before ended_at", field="body.ended_at")
    out = await q.end(conn, same.device_id, same.started_at, ended)
    assert out is not None  # the row is locked through its device
    return Outcome(out, created=False)


async def check_out(
    conn: AsyncConnection,
    device_id: str,
    body: CheckOutIn,
    now: datetime,
    max_future_s: float,
    caller: Caller,
) -> CheckInOut:
    """End the device's open check-in (rules in the module docstring)."""
    ended = check_written(body.ended_at or now, "body.ended_at", now, max_future_s)
    async with conn.transaction():
        await _device_site(conn, device_id, "path.device_id", caller)
        current = await q.open_one(conn, device_id)
        if current is None:
            last = await q.last(conn, device_id)
            if (
                last is not None
                and last.ended_at == ended
                and body.participant_id in (None, last.participant_id)
            ):
                return last  # the same request again
            raise conflict(f"no open check-in on device {device_id!r}")
        if body.participant_id is not None and body.participant_id != current.participant_id:
            raise conflict(
                f"the open check-in on {device_id!r} is of participant {current.participant_id}",
                field="body.participant_id",
            )
        if ended <= current.started_at:
            raise invalid(
                "body.ended_at",
                f"ended_at {ended.isoformat()} is not after the check-in's started_at "
                f"{current.started_at.isoformat()}",
            )
        out = await q.end(conn, device_id, current.started_at, ended)
    assert out is not None  # the row is locked through its device
    return out
