"""Benchmark: what authentication costs per request.

    python bench/bench_auth.py [--requests 4000] [--database-url postgresql://postgres@127.0.0.1:5432/postgres]

One endpoint (``GET /v1/devices/{device_id}``, one indexed read) of the real app over a real PostgreSQL,
called in-process (httpx over ASGI: no network between), in interleaved rounds:
- with authentication: an admin API key, verified by the guard (one indexed read of the key, SHA-256,
  constant-time compare, the role from the policy table);
- without: the same app with the guard and the caller overridden (FastAPI ``dependency_overrides``), i.e. the
  endpoint's own cost.
Prints p50/p99 of both and their difference, and p50/p99 of the guard's authentication alone.

Limit (issue 11): authentication adds < 1 ms at p99.

The database: a fresh one made on the server of ``--database-url`` (or ``VITALAB_BENCH_DATABASE_URL``),
dropped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

import httpx
import psycopg
from psycopg import conninfo

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from api import keys
from api.guard import Guard, enforce
from api.main import create_app
from api.security import Caller, Scope, current_caller
from vitalab.db import migrate
from vitalab.settings import load_settings

LIMIT_MS = 1.0
NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
ADMIN = Caller(role="admin", key_id=None, subject="bench", sites=None, studies=None, address=None)


def quantiles(samples: list[float]) -> tuple[float, float]:
    cuts = statistics.quantiles(samples, n=100, method="inclusive")
    return cuts[49] * 1e3, cuts[98] * 1e3


async def timed(n: int, call: Callable[[], Awaitable[None]]) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        await call()
        out.append(time.perf_counter() - t0)
    return out


async def run(url: str, requests: int, rounds: int) -> None:
    migrate(url, timescale="off")
    with psycopg.connect(url) as setup:
        setup.execute("INSERT INTO sites (site_id) VALUES ('gym-a')")
        setup.execute("INSERT INTO devices (device_id, site_id, kind) VALUES ('bike-1', 'gym-a', 'bike')")
    async with await psycopg.AsyncConnection.connect(url) as conn:
        made = await keys.create_key(
            conn, name="bench", owner="bench", role="admin", scope=Scope.everything(), now=NOW
        )
    token = made.token
    settings = load_settings(database_url=url, mqtt_url=None)
    app = create_app(settings, url, clock=lambda: NOW)
    headers = {"Authorization": f"Bearer {token}"}
    per_round = requests // rounds
    with_auth: list[float] = []
    without: list[float] = []
    guard_only: list[float] = []
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 50000))
        async with httpx.AsyncClient(transport=transport, base_url="http://bench") as http:

            async def get() -> None:
                r = await http.get("/v1/devices/bike-1", headers=headers)
                assert r.status_code == 200, r.text

            guard: Guard = app.state.guard

            async def authenticate() -> None:
                async with app.state.security_pool.connection() as conn:
                    caller = await guard.authenticate(conn, token, NOW, "127.0.0.1")
                    assert isinstance(caller, Caller)
                    if caller.key_id is not None:
                        await keys.touch(conn, caller.key_id, NOW)

            await timed(200, get)  # warm up: pools filled, statements prepared
            app.dependency_overrides.clear()
            for _ in range(rounds):
                with_auth += await timed(per_round, get)
                app.dependency_overrides[enforce] = lambda: None
                app.dependency_overrides[current_caller] = lambda: ADMIN
                without += await timed(per_round, get)
                app.dependency_overrides.clear()
                guard_only += await timed(per_round, authenticate)
            assert (await http.get("/v1/devices/bike-1")).status_code == 401  # the guard is really on

    a50, a99 = quantiles(with_auth)
    b50, b99 = quantiles(without)
    g50, g99 = quantiles(guard_only)
    print(
        f"GET /v1/devices/{{device_id}} in-process, {len(with_auth)} calls each, {rounds} interleaved rounds"
    )
    print(f"  with authentication     p50 {a50:7.3f} ms   p99 {a99:7.3f} ms")
    print(f"  without                 p50 {b50:7.3f} ms   p99 {b99:7.3f} ms")
    cost99 = a99 - b99
    print(f"  authentication adds     p50 {a50 - b50:7.3f} ms   p99 {cost99:7.3f} ms")
    print(f"  the guard's work alone  p50 {g50:7.3f} ms   p99 {g99:7.3f} ms  (key read, hash, compare)")
    verdict = "met" if cost99 < LIMIT_MS else "NOT met"
    print(f"limit: authentication adds < {LIMIT_MS:g} ms at p99: {verdict} ({cost99:.3f} ms)")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument(
        "--database-url",
        default=os.environ.get("VITALAB_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"),
    )
    args = parser.parse_args()
    name = f"vitalab_bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(args.database_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    params = conninfo.conninfo_to_dict(args.database_url)
    params["dbname"] = name
    url = conninfo.make_conninfo(**params)  # type: ignore[arg-type]
    try:
        asyncio.run(run(url, args.requests, args.rounds))
    finally:
        with psycopg.connect(args.database_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
