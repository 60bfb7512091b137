"""Running the API for a test: a real uvicorn server on a loopback port, with a pinned clock, and a client
holding an admin key (or a key of another role)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from datetime import datetime, timedelta
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI

from api.health import HealthCheck
from api.main import create_app
from tests.conftest import free_port
from tests.support.helpers import make_key, make_settings
from vitalab.broker import MosquittoAuth

PROBLEM = "application/problem+json"


class PinnedClock:
    """A clock for the API that says ``now`` until a test moves it."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, by: timedelta) -> None:
        self.now += by


def app_at(
    database_url: str,
    now: datetime | PinnedClock,
    health_checks: Sequence[HealthCheck] = (),
    *,
    broker_auth: MosquittoAuth | None = None,
    **settings: Any,
) -> FastAPI:
    """The API over ``database_url`` whose clock says ``now`` (or what the pinned clock says);
    ``broker_auth``: the broker account store device registration uses (none: logins managed elsewhere)."""
    clock = now if isinstance(now, PinnedClock) else PinnedClock(now)
    app = create_app(
        make_settings(**settings),
        database_url,
        clock=clock,
        health_checks=health_checks,
        broker_auth=broker_auth,
    )
    app.state.test_database_url = database_url
    return app


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@contextlib.asynccontextmanager
async def serve(app: FastAPI, key: str | None = "admin") -> AsyncIterator[httpx.AsyncClient]:
    """``app`` (made by :func:`app_at`) served by uvicorn on a free loopback port; yields a client with that
    base URL sending ``key``: ``"admin"`` (the default) makes an admin key in the app's database, None
    sends no credential (the database need not have a schema then)."""
    if key == "admin":
        key = await make_key(app.state.test_database_url)
    headers = bearer(key) if key else None
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.02)
    try:
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", timeout=30.0, headers=headers
        ) as http:
            yield http
    finally:
        server.should_exit = True
        await task


def assert_problem(r: httpx.Response, status: int, field: str | None = None) -> dict[str, Any]:
    """``r`` is an RFC 9457 problem of ``status`` (naming ``field`` when given); returns its body."""
    assert r.status_code == status, (r.request.url, r.status_code, r.text)
    assert r.headers["content-type"].startswith(PROBLEM), r.headers["content-type"]
    body: dict[str, Any] = r.json()
    assert body["status"] == status
    assert body["type"].startswith("tag:vitalab.dev,2026:problem/")
    assert isinstance(body["title"], str)
    assert body["title"]
    assert isinstance(body["detail"], str)
    assert body["detail"]
    if field is not None:
        assert body.get("field") == field, (r.request.url, body)
    return body
