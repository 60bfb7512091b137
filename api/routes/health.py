from __future__ import annotations

import psycopg
from fastapi import APIRouter, Response, status

from api.deps import PoolDep
from api.models import Health

router = APIRouter(tags=["health"])


@router.get("/health", response_model=Health)
async def health(pool: PoolDep, response: Response) -> Health:
    """200 when the database answers, 503 otherwise."""
    try:
        async with pool.connection(timeout=2.0) as conn:
            cur = await conn.execute(
                "SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb')"
            )
            row = await cur.fetchone()
    except (psycopg.Error, TimeoutError):
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
        return Health(status="unavailable", database=False)
    return Health(status="ok", database=True, timescale=bool(row and row[0]))
