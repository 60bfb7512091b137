"""The database itself (``/health``)."""

from __future__ import annotations

from psycopg import AsyncConnection, sql

from api.queries import exists


async def has_timescale(conn: AsyncConnection) -> bool:
    return await exists(conn, sql.SQL("SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'"))
