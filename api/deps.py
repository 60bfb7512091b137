"""Dependencies of the routes, as ``Annotated`` aliases. Everything comes from ``app.state``, set once by
:func:`api.main.create_app` (settings, clock, health checks) and its lifespan (the connection pools). Every
dependency is a coroutine: FastAPI runs a plain function dependency in a thread pool, which costs more than
the dependency itself.

:data:`ConnDep` is a connection of the main pool (each request's work is one transaction, committed when the
route returns). :data:`ReadConnDep` is one of the read pool, in autocommit: for routes that only read (the
operators' endpoints), no ``BEGIN``/``COMMIT`` round trips, each statement its own snapshot (what the default
READ COMMITTED gives each statement anyway). A route that writes, or needs several statements to see one
snapshot, takes :data:`ConnDep`."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from datetime import datetime
from typing import Annotated

from fastapi import Depends, Request
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from api.health import HealthCheck
from vitalab.settings import Settings

Clock = Callable[[], datetime]


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_pool(request: Request) -> AsyncConnectionPool:
    pool: AsyncConnectionPool = request.app.state.pool
    return pool


async def get_conn(pool: Annotated[AsyncConnectionPool, Depends(get_pool)]) -> AsyncIterator[AsyncConnection]:
    async with pool.connection() as conn:
        yield conn


async def get_read_pool(request: Request) -> AsyncConnectionPool:
    pool: AsyncConnectionPool = request.app.state.read_pool
    return pool


async def get_read_conn(
    pool: Annotated[AsyncConnectionPool, Depends(get_read_pool)],
) -> AsyncIterator[AsyncConnection]:
    async with pool.connection() as conn:
        yield conn


async def get_now(request: Request) -> datetime:
    """The request's "now" (aware, UTC), from the app's clock: the one place a handler learns the time."""
    clock: Clock = request.app.state.clock
    return clock()


async def get_health_checks(request: Request) -> Sequence[HealthCheck]:
    checks: Sequence[HealthCheck] = request.app.state.health_checks
    return checks


SettingsDep = Annotated[Settings, Depends(get_settings)]
PoolDep = Annotated[AsyncConnectionPool, Depends(get_pool)]
ConnDep = Annotated[AsyncConnection, Depends(get_conn)]
ReadConnDep = Annotated[AsyncConnection, Depends(get_read_conn)]
NowDep = Annotated[datetime, Depends(get_now)]
HealthChecksDep = Annotated[Sequence[HealthCheck], Depends(get_health_checks)]
