from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from api.deps import ConnDep
from api.models import DeadLetterOut

router = APIRouter(prefix="/v1/dead-letters", tags=["dead letters"])


@router.get("", response_model=list[DeadLetterOut])
async def list_dead_letters(
    conn: ConnDep,
    reason: str | None = None,
    device_id: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[DeadLetterOut]:
    """What the ingester refused, newest first, with the reason and the offending field."""
    cur = await conn.execute(
        "SELECT id, received_at, topic, reason, detail, path, device_id, payload_size, payload "
        "FROM dead_letters WHERE (%(r)s::text IS NULL OR reason = %(r)s) "
        "AND (%(d)s::text IS NULL OR device_id = %(d)s) ORDER BY received_at DESC, id DESC LIMIT %(n)s",
        {"r": reason, "d": device_id, "n": limit},
    )
    return [
        DeadLetterOut(
            id=r[0],
            received_at=r[1],
            topic=r[2],
            reason=r[3],
            detail=r[4],
            path=r[5],
            device_id=r[6],
            payload_size=r[7],
            payload_preview=bytes(r[8]).decode("utf-8", errors="replace"),
        )
        for r in await cur.fetchall()
    ]
