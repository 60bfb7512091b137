"""Check-ins: a participant on (or wearing) a device from ``started_at`` to ``ended_at`` (the
``device_assignments`` table, which the analytics job reads to name a session's participant and to join a
participant's strap with the machine they use).

Rules, per device (its row is locked, so concurrent requests for one device are serialised):

* a new check-in closes the device's open check-in at its ``started_at`` (the next member took the
  machine); the same participant checking in again on the device they are checked in on changes nothing
  (200, "already checked in");
* the same request again (same device, participant and ``started_at``) answers 200 with what is stored,
  so a kiosk may retry after a connection error;
* a check-in may not overlap another one of the device (409), nor start more than ``max_future_s`` ahead of
  the server's clock, nor name a participant of another site (422);
* ending needs an open check-in (409 without one, unless the device's last check-in already ended at exactly
  the requested time: a retried request, 200).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Body, HTTPException, Query, Response, status
from psycopg import AsyncConnection
from psycopg.rows import class_row

from api.deps import ConnDep, SettingsDep
from api.models import CheckInIn, CheckInOut, CheckOutIn

router = APIRouter(prefix="/v1/check-ins", tags=["participants"])

_COLS = "device_id, participant_id, started_at, ended_at"
_ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"description": "unknown device or participant"},
    409: {"description": "conflicts with the device's check-ins"},
}


async def _device_site(conn: AsyncConnection, device_id: str) -> str:
    cur = await conn.execute("SELECT site_id FROM devices WHERE device_id = %s FOR UPDATE", (device_id,))
    row = await cur.fetchone()
    if row is None:
        raise HTTPException(status_code=404, detail=f"no device {device_id!r}")
    site: str = row[0]
    return site


async def _one(conn: AsyncConnection, query: str, *params: Any) -> CheckInOut | None:
    async with conn.cursor(row_factory=class_row(CheckInOut)) as cur:
        await cur.execute(query, params)
        return await cur.fetchone()


def _not_ahead(t: datetime, what: str, max_future_s: float) -> None:
    if t > datetime.now(UTC) + timedelta(seconds=max_future_s):
        raise HTTPException(status_code=422, detail=f"{what} {t.isoformat()} is in the future")


@router.post("", response_model=CheckInOut, status_code=status.HTTP_201_CREATED, responses=_ERRORS)
async def check_in(conn: ConnDep, settings: SettingsDep, body: CheckInIn, response: Response) -> CheckInOut:
    """Check a participant in on a device (rules in the module docstring)."""
    started = body.started_at or datetime.now(UTC)
    _not_ahead(started, "started_at", settings.max_future_s)
    async with conn.transaction():
        site = await _device_site(conn, body.device_id)
        cur = await conn.execute(
            "SELECT site_id FROM participants WHERE participant_id = %s", (body.participant_id,)
        )
        row = await cur.fetchone()
        if row is None:
            raise HTTPException(status_code=404, detail=f"no participant {body.participant_id}")
        if row[0] != site:
            raise HTTPException(
                status_code=422,
                detail=f"participant {body.participant_id} is registered at site {row[0]!r}, "
                f"device {body.device_id!r} is at site {site!r}",
            )
        same = await _one(
            conn,
            f"SELECT {_COLS} FROM device_assignments WHERE device_id = %s AND started_at = %s",
            body.device_id,
            started,
        )
        if same is not None:
            return await _again(conn, same, body, response)
        current = await _one(
            conn,
            f"SELECT {_COLS} FROM device_assignments WHERE device_id = %s AND ended_at IS NULL "
            "ORDER BY started_at DESC LIMIT 1",
            body.device_id,
        )
        if current is not None and current.started_at < started:
            if current.participant_id == body.participant_id and body.ended_at is None:
                response.status_code = status.HTTP_200_OK  # already checked in
                return current
            await conn.execute(
                "UPDATE device_assignments SET ended_at = %s WHERE device_id = %s AND started_at = %s",
                (started, body.device_id, current.started_at),
            )
        clash = await _one(
            conn,
            f"SELECT {_COLS} FROM device_assignments WHERE device_id = %s "
            "AND started_at < coalesce(%s, 'infinity'::timestamptz) "
            "AND coalesce(ended_at, 'infinity'::timestamptz) > %s ORDER BY started_at LIMIT 1",
            body.device_id,
            body.ended_at,
            started,
        )
        if clash is not None:
            raise HTTPException(
                status_code=409,
                detail=f"device {body.device_id!r} has a check-in of {clash.participant_id} from "
                f"{clash.started_at.isoformat()} to "
                f"{clash.ended_at.isoformat() if clash.ended_at else 'now (open)'} overlapping this one",
            )
        created = await _one(
            conn,
            f"INSERT INTO device_assignments ({_COLS}) VALUES (%s, %s, %s, %s) RETURNING {_COLS}",
            body.device_id,
            body.participant_id,
            started,
            body.ended_at,
        )
    assert created is not None
    return created


async def _again(conn: AsyncConnection, same: CheckInOut, body: CheckInIn, response: Response) -> CheckInOut:
    """A check-in with the device's and start of a stored one: the same again (200) or a conflict."""
    if same.participant_id != body.participant_id:
        raise HTTPException(
            status_code=409,
            detail=f"device {same.device_id!r} has a check-in of another participant at "
            f"{same.started_at.isoformat()}",
        )
    response.status_code = status.HTTP_200_OK
    if body.ended_at is None or body.ended_at == same.ended_at:
        return same
    if same.ended_at is not None:
        raise HTTPException(
            status_code=409,
            detail=f"this check-in already ended at {same.ended_at.isoformat()}, "
            f"not {body.ended_at.isoformat()}",
        )
    later = await _one(
        conn,
        f"SELECT {_COLS} FROM device_assignments WHERE device_id = %s AND started_at > %s "
        "AND started_at < %s LIMIT 1",
        same.device_id,
        same.started_at,
        body.ended_at,
    )
    if later is not None:
        raise HTTPException(status_code=409, detail="a later check-in of the device starts before ended_at")
    ended = await _one(
        conn,
        f"UPDATE device_assignments SET ended_at = %s WHERE device_id = %s AND started_at = %s "
        f"RETURNING {_COLS}",
        body.ended_at,
        same.device_id,
        same.started_at,
    )
    assert ended is not None
    return ended


@router.post("/{device_id}/end", response_model=CheckInOut, responses=_ERRORS)
async def end_check_in(
    conn: ConnDep,
    settings: SettingsDep,
    device_id: str,
    body: Annotated[CheckOutIn | None, Body()] = None,
) -> CheckInOut:
    """End the device's open check-in (rules in the module docstring)."""
    body = body or CheckOutIn()
    ended = body.ended_at or datetime.now(UTC)
    _not_ahead(ended, "ended_at", settings.max_future_s)
    async with conn.transaction():
        await _device_site(conn, device_id)
        current = await _one(
            conn,
            f"SELECT {_COLS} FROM device_assignments WHERE device_id = %s AND ended_at IS NULL "
            "ORDER BY started_at DESC LIMIT 1",
            device_id,
        )
        if current is None:
            last = await _one(
                conn,
                f"SELECT {_COLS} FROM device_assignments WHERE device_id = %s "
                "ORDER BY started_at DESC LIMIT 1",
                device_id,
            )
            if (
                last is not None
                and last.ended_at == ended
                and body.participant_id in (None, last.participant_id)
            ):
                return last  # the same request again
            raise HTTPException(status_code=409, detail=f"no open check-in on device {device_id!r}")
        if body.participant_id is not None and body.participant_id != current.participant_id:
            raise HTTPException(
                status_code=409,
                detail=f"the open check-in on {device_id!r} is of participant {current.participant_id}",
            )
        if ended <= current.started_at:
            raise HTTPException(
                status_code=422,
                detail=f"ended_at {ended.isoformat()} is not after the check-in's started_at "
                f"{current.started_at.isoformat()}",
            )
        out = await _one(
            conn,
            f"UPDATE device_assignments SET ended_at = %s WHERE device_id = %s AND started_at = %s "
            f"RETURNING {_COLS}",
            ended,
            device_id,
            current.started_at,
        )
    assert out is not None
    return out


Limit = Annotated[int, Query(ge=1, le=10_000)]


@router.get("", response_model=list[CheckInOut])
async def list_check_ins(
    conn: ConnDep,
    device: str | None = None,
    participant: UUID | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: Limit = 1000,
) -> list[CheckInOut]:
    """Check-ins overlapping ``[since, until)`` (either bound optional), oldest first."""
    async with conn.cursor(row_factory=class_row(CheckInOut)) as cur:
        await cur.execute(
            f"SELECT {_COLS} FROM device_assignments WHERE (%(d)s::text IS NULL OR device_id = %(d)s) "
            "AND (%(p)s::uuid IS NULL OR participant_id = %(p)s) "
            "AND (%(since)s::timestamptz IS NULL OR ended_at IS NULL OR ended_at > %(since)s) "
            "AND (%(until)s::timestamptz IS NULL OR started_at < %(until)s) "
            "ORDER BY started_at, device_id LIMIT %(limit)s",
            {"d": device, "p": participant, "since": since, "until": until, "limit": limit},
        )
        return await cur.fetchall()
