"""The FastAPI application. Built by :func:`create_app` with settings made at start-up."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi_offline import FastAPIOffline
from psycopg_pool import AsyncConnectionPool
from starlette.middleware.gzip import GZipMiddleware

import vitalab
from api import errors
from api.deps import Clock
from api.health import HealthCheck
from api.middleware import RejectNul
from api.routes import (
    check_ins,
    dead_letters,
    devices,
    exports,
    health,
    participants,
    samples,
    sessions,
    sites,
    studies,
)
from vitalab.settings import Settings

DOCS_STATIC = "/static/docs"
GZIP_MIN_BYTES = 1024
DESCRIPTION = """\
Errors are RFC 9457 problem details (`application/problem+json`: `type`, `title`, `status`, `detail`, and
`field` naming the offending input). Times need an offset (`Z` or `+01:00`); times and days that select data
lie in 2000-01-01 .. 2100-01-01, and `since` comes before `until`. Unknown devices, sites and participants
are 404 wherever they are named.

Lists come in pages of at most `limit` rows in a fixed order; when more rows exist the `Link` header
(RFC 8288) holds the next (`rel="next"`) or previous (`rel="prev"`) page. Responses are gzip-compressed
when the client accepts it.
"""


def _system_clock() -> datetime:
    return datetime.now(UTC)


def create_app(
    settings: Settings,
    database_url: str,
    *,
    clock: Clock = _system_clock,
    health_checks: Sequence[HealthCheck] = (),
) -> FastAPI:
    """The API over ``database_url``. ``clock`` is the one source of "now" of every handler (tests pin it);
    ``health_checks`` are reported by ``/health`` (see :mod:`api.health`)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncConnectionPool(database_url, min_size=1, max_size=8, open=False) as pool:
            app.state.pool = pool
            yield

    # Swagger UI and ReDoc from the files fastapi-offline ships: /docs and /redoc work without a network
    app = FastAPIOffline(
        title="vitalab",
        version=vitalab.__version__,
        summary="Smart-gym telemetry for living labs: devices, samples, sessions, sites, dead letters.",
        description=DESCRIPTION,
        lifespan=lifespan,
        static_url=DOCS_STATIC,
        # no badge fetched from the public validator: the page makes no request off this server
        swagger_ui_parameters={"validatorUrl": None},
    )
    app.state.settings = settings
    app.state.clock = clock
    app.state.health_checks = tuple(health_checks)
    errors.install(app)
    for module in (
        health,
        devices,
        samples,
        dead_letters,
        sessions,
        participants,
        check_ins,
        sites,
        studies,
        exports,
    ):
        app.include_router(module.router)
    app.add_middleware(RejectNul, templates=lambda: app.openapi()["paths"])
    app.add_middleware(GZipMiddleware, minimum_size=GZIP_MIN_BYTES)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = _problem_media_types(
                get_openapi(
                    title=app.title,
                    version=app.version,
                    summary=app.summary,
                    description=app.description,
                    routes=app.routes,
                )
            )
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def _problem_media_types(schema: dict[str, Any]) -> dict[str, Any]:
    """Error responses documented as ``application/problem+json`` (FastAPI writes ``application/json``)."""
    ref = "#/components/schemas/ProblemDetails"
    for item in schema.get("paths", {}).values():
        for operation in item.values():
            for code, answer in operation.get("responses", {}).items():
                content = answer.get("content", {})
                if (
                    code[:1] in "45"
                    and content.get("application/json", {}).get("schema", {}).get("$ref") == ref
                ):
                    content[errors.MEDIA_TYPE] = content.pop("application/json")
    return schema
