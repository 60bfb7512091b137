"""The FastAPI application. Built by :func:`create_app` with settings made at start-up."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from psycopg_pool import AsyncConnectionPool

import vitalab
from api.routes import check_ins, dead_letters, devices, health, participants, samples, sessions, sites
from vitalab.settings import Settings


def create_app(settings: Settings, database_url: str) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncConnectionPool(database_url, min_size=1, max_size=8, open=False) as pool:
            app.state.pool = pool
            yield

    app = FastAPI(
        title="vitalab",
        version=vitalab.__version__,
        summary="Smart-gym telemetry for living labs: devices, samples, dead letters.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    for module in (health, devices, samples, dead_letters, sessions, participants, check_ins, sites):
        app.include_router(module.router)
    return app
