from __future__ import annotations

from fastapi import APIRouter
from psycopg.rows import class_row

from api.deps import ConnDep
from api.models import SampleOut
from api.routes.devices import _SAMPLE_COLS

router = APIRouter(prefix="/v1/samples", tags=["samples"])


@router.get("/latest", response_model=list[SampleOut])
async def latest_samples(conn: ConnDep, site: str | None = None) -> list[SampleOut]:
    """The newest sample of every device (one index probe per device)."""
    async with conn.cursor(row_factory=class_row(SampleOut)) as cur:
        await cur.execute(
            f"SELECT s.* FROM devices d CROSS JOIN LATERAL ("
            f"  SELECT {_SAMPLE_COLS} FROM samples WHERE device_id = d.device_id ORDER BY t DESC LIMIT 1"
            f") s WHERE %(site)s::text IS NULL OR d.site_id = %(site)s ORDER BY s.device_id",
            {"site": site},
        )
        return await cur.fetchall()
