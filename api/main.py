"""The FastAPI application. Built by :func:`create_app` with settings made at start-up."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

from fastapi import Depends, FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi_offline import FastAPIOffline
from psycopg_pool import AsyncConnectionPool
from starlette.middleware.gzip import GZipMiddleware

import vitalab
from api import errors, policy
from api.deps import Clock
from api.guard import AuditTrail, Guard, enforce
from api.health import HealthCheck
from api.live import hub_config  # issue 13
from api.live.hub import LiveHubs  # issue 13
from api.live.source import PoolSource  # issue 13
from api.middleware import RejectNul
from api.report_cache import ReportCache
from api.routes import (
    audit,
    check_ins,
    contract,
    dashboard,  # issue 13: the operators' page
    dead_letters,
    devices,
    erasure,
    exports,
    fleet,
    health,
    keys,
    live,  # issue 13: the live floor
    participants,
    registration,
    samples,
    sessions,
    site_exports,
    sites,
    sites_admin,
    studies,
)
from vitalab.broker import GenerationReload, MosquittoAuth
from vitalab.settings import MqttTarget, Settings

log = logging.getLogger(__name__)

BROKER_RELOAD_WAIT_S = 5.0
"""How long a change of broker logins waits for the broker to apply it (deploy/mosquitto/run.sh)."""

DOCS_STATIC = "/static/docs"
GZIP_MIN_BYTES = 1024
GZIP_LEVEL = 1
"""Fastest compression: JSON reports shrink about as much at level 1 as at 9, for a fraction of the CPU."""
DESCRIPTION = """\
Errors are RFC 9457 problem details (`application/problem+json`: `type`, `title`, `status`, `detail`, and
`field` naming the offending input). Times need an offset (`Z` or `+01:00`); times and days that select data
lie in 2000-01-01 .. 2100-01-01, and `since` comes before `until`. Unknown devices, sites and participants
are 404 wherever they are named.

Every route but `/health` and these documents needs a credential: an API key (`vitalab keys create`, or
`POST /v1/keys` as an admin) sent as `Authorization: Bearer vl_...` (or `X-API-Key`), or, where single
sign-on is set up, a bearer token of the lab's identity provider. Without one the answer is 401; a role that
may not call a route gets 403; anything outside the caller's sites and studies answers 404, exactly as an
unknown one does.

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
    broker_auth: MosquittoAuth | None = None,
    live_mqtt: MqttTarget | None = None,
) -> FastAPI:
    """The API over ``database_url``. ``clock`` is the one source of "now" of every handler (tests pin it);
    ``health_checks`` are reported by ``/health`` (see :mod:`api.health`).

    ``broker_auth``: the broker's account store in which device and gateway registration issues and revokes
    logins (``vitalab up`` shares its in-process broker's); by default the one in ``broker_state_dir``
    (reloads go through its generation file, deploy/mosquitto/run.sh), or none when that is unset.

    Every route but ``/health`` and the documentation needs a credential (:mod:`api.guard`,
    :mod:`api.policy`): there is no switch to turn that off. The composition root makes the first admin
    key with :func:`api.keys.first_admin_key` (``vitalab up``) or ``vitalab keys create``.

    ``live_mqtt``: the broker the live floor follows (default: ``settings.mqtt_url``; none: the live floor is
    the database's snapshot only)."""

    timeout = settings.api_db_timeout_s
    live_config = hub_config(settings)  # a bad setting fails here, not at the first live client
    live_target = live_mqtt or settings.mqtt_target()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # requests wait at most `timeout` for a connection: a database outage answers 503 quickly
        main = AsyncConnectionPool(database_url, min_size=1, max_size=8, open=False, timeout=timeout)
        # the guard's own connections (keys, audit), autocommit: one round trip per statement
        guard = AsyncConnectionPool(
            database_url, min_size=1, max_size=4, open=False, timeout=timeout, kwargs={"autocommit": True}
        )
        # the read-only routes' connections (api/deps.py ReadConnDep), autocommit
        read = AsyncConnectionPool(
            database_url, min_size=2, max_size=8, open=False, timeout=timeout, kwargs={"autocommit": True}
        )
        async with main as pool, guard as security_pool, read as read_pool:
            app.state.pool = pool
            app.state.security_pool = security_pool
            app.state.read_pool = read_pool
            # the live floor's hubs: one per watched site, made for its first client (api/live/hub.py)
            app.state.live = LiveHubs(
                config=live_config, clock=clock, source=PoolSource(lambda: pool), target=live_target
            )
            try:
                yield
            finally:
                await app.state.live.close()

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
        # the guard is every route's first dependency (api/guard.py, api/policy.py)
        dependencies=[Depends(enforce)],
    )
    app.state.settings = settings
    app.state.clock = clock
    app.state.health_checks = tuple(health_checks)
    app.state.guard = Guard(settings)
    if broker_auth is None and settings.broker_state_dir is not None:
        state_dir = settings.broker_state_dir
        broker_auth = MosquittoAuth(state_dir, GenerationReload(state_dir, wait_s=BROKER_RELOAD_WAIT_S))
    app.state.broker_auth = broker_auth
    app.state.report_cache = ReportCache()  # reports served again while their inputs are unchanged
    errors.install(app)
    routers = (
        health,
        devices,
        samples,
        dead_letters,
        sessions,
        participants,
        check_ins,
        sites,
        contract,
        keys,
        audit,
        studies,
        exports,
        site_exports,  # gym operators' site exports (jobs of the exports' worker)
        # --- device registration (issue 11: devices on the broker) ---
        sites_admin,
        registration,
        live,  # issue 13: the live floor
        fleet,  # fleet health and maintenance
        erasure,
    )
    for module in routers:
        app.include_router(module.router)
    dashboard.install(app)  # issue 13: the operators' page at / and /static/dashboard/
    unguarded = policy.missing(app.routes)
    if unguarded:  # default deny: they answer 403 to everyone (and tests/api/test_policy.py fails)
        log.warning("routes without an access policy entry (nobody may call them): %s", unguarded)
    app.add_middleware(AuditTrail, pool=lambda: app.state.security_pool)
    app.add_middleware(RejectNul, templates=lambda: app.openapi()["paths"])
    app.add_middleware(GZipMiddleware, minimum_size=GZIP_MIN_BYTES, compresslevel=GZIP_LEVEL)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = _secured(
                _problem_media_types(
                    get_openapi(
                        title=app.title,
                        version=app.version,
                        summary=app.summary,
                        description=app.description,
                        routes=app.routes,
                    )
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


SECURITY_SCHEMES: dict[str, Any] = {
    "bearer": {
        "type": "http",
        "scheme": "bearer",
        "description": "an API key (`vl_<key id>_<secret>`) or, with single sign-on, the identity "
        "provider's JWT",
    },
    "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key", "description": "an API key"},
}


def _secured(schema: dict[str, Any]) -> dict[str, Any]:
    """The security schemes, required by every operation the policy does not leave open, which also
    documents the guard's answers (401, 403, 429, 503)."""
    components = schema.setdefault("components", {})
    components["securitySchemes"] = SECURITY_SCHEMES
    problem = {errors.MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/ProblemDetails"}}}
    components.setdefault("schemas", {}).setdefault(
        "ProblemDetails", errors.ProblemDetails.model_json_schema(ref_template="#/components/schemas/{model}")
    )
    guard_answers = {
        "401": "no credential, or a wrong, expired or revoked one",
        "403": "the caller's role may not call this",
        "429": "too many failed authentications from this address; see `Retry-After`",
        "503": "the database is unavailable",
    }
    for template, item in schema.get("paths", {}).items():
        for method, operation in item.items():
            rule = policy.rule_for(method.upper(), template)
            if rule is not None and rule.public:
                continue
            operation["security"] = [{"bearer": []}, {"apiKey": []}]
            answers = operation.setdefault("responses", {})
            for code, description in guard_answers.items():
                answers.setdefault(code, {"description": description, "content": problem})
    return schema
