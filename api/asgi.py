"""The API as uvicorn runs it: :func:`build` for one process, :func:`create` as the application factory each
of ``VITALAB_API_WORKERS`` worker processes calls (``uvicorn api.asgi:create --factory``), and
:func:`serve`, which runs either.

Each worker is a process of its own, with its own connection pools, report cache, cache of verified keys
(:mod:`api.key_cache`: a key revoked on one worker is refused by the others within
``VITALAB_API_KEY_CACHE_S``), failed-authentication throttle and live-floor hubs (one broker connection per
watched site per worker). The workers share the listening socket; the kernel spreads connections over
them. Workers read their settings from the environment (``VITALAB_*``), as the parent did.
"""

from __future__ import annotations

import os
from typing import Final

import uvicorn
from fastapi import FastAPI

from api.health import analytics_job
from api.main import create_app
from vitalab import logs
from vitalab.settings import Settings, load_settings

LOG_LEVEL_ENV: Final = "VITALAB_API_LOG_LEVEL_FOR_WORKERS"
"""How the parent's log level reaches the workers (they configure logging themselves)."""


def build(settings: Settings) -> FastAPI:
    """The app of one API process over ``settings.database_url``."""
    if not settings.database_url:
        raise ValueError("database_url: VITALAB_DATABASE_URL is not set")
    # the analytics job may run in another process (`vitalab ingest`): /health reports its failing runs
    return create_app(settings, settings.database_url, health_checks=[analytics_job(stale_after=None)])


def create() -> FastAPI:
    """The application factory of a worker process: logging and settings from the environment."""
    logs.configure(os.environ.get(LOG_LEVEL_ENV, "info"))
    return build(load_settings())


def serve(settings: Settings, log_level: str = "info") -> None:
    """Serve the API on ``api_host:api_port`` with ``api_workers`` processes (uvloop, httptools; no access
    log: one JSON log line per request would cost more than many requests)."""
    common: dict[str, object] = {
        "host": settings.api_host,
        "port": settings.api_port,
        "loop": "auto",  # uvloop and httptools, both dependencies (where uvloop exists)
        "http": "auto",
        "access_log": False,
    }
    if settings.api_workers == 1:
        uvicorn.run(build(settings), **common)  # type: ignore[arg-type]
        return
    os.environ[LOG_LEVEL_ENV] = log_level
    uvicorn.run("api.asgi:create", factory=True, workers=settings.api_workers, **common)  # type: ignore[arg-type]
