"""The cache of verified API keys (api/key_cache.py): what it keeps, for how long, and that a revocation
still takes effect: at once on the process that revoked the key, within the cache's bound on any other
(two apps over one database stand for two API workers; the clock is pinned and moved by the test)."""

from __future__ import annotations

from datetime import timedelta

import psycopg
import pytest

from api import keys
from api.guard import Guard
from api.key_cache import KeyCache
from api.security import Caller, Scope
from tests.api.seed import NOW, seed
from tests.api.support import PinnedClock, app_at, assert_problem, bearer, serve
from tests.support.helpers import make_key

CALLER = Caller("operator", "0123456789abcdef", "ops", frozenset({"gym-a"}), None, "10.0.0.1")
TOKEN = "vl_0123456789abcdef_" + "a" * 43


def test_a_verified_key_is_kept_for_its_time_to_live_with_each_requests_address() -> None:
    cache = KeyCache(10.0)
    cache.put(TOKEN, CALLER, NOW, expires_at=None)
    kept = cache.get(TOKEN, NOW + timedelta(seconds=9.9), "10.0.0.2")
    assert kept is not None
    assert (kept.key_id, kept.role, kept.sites) == (CALLER.key_id, "operator", frozenset({"gym-a"}))
    assert kept.address == "10.0.0.2"
    assert cache.get(TOKEN, NOW + timedelta(seconds=10), "10.0.0.2") is None
    assert cache.get(TOKEN, NOW + timedelta(seconds=1), None) is None  # gone once expired


def test_the_cache_keeps_nothing_past_the_keys_expiry_or_for_another_secret() -> None:
    cache = KeyCache(10.0)
    cache.put(TOKEN, CALLER, NOW, expires_at=NOW + timedelta(seconds=3))
    assert cache.get(TOKEN, NOW + timedelta(seconds=2), None) is not None
    assert cache.get(TOKEN, NOW + timedelta(seconds=3), None) is None
    cache.put(TOKEN, CALLER, NOW, expires_at=None)
    assert cache.get(TOKEN[:-1] + "b", NOW, None) is None  # same key id, another secret


def test_invalidate_forgets_the_key_and_a_zero_time_to_live_keeps_nothing() -> None:
    cache = KeyCache(10.0)
    cache.put(TOKEN, CALLER, NOW, expires_at=None)
    cache.invalidate("fedcba9876543210")
    assert cache.get(TOKEN, NOW, None) is not None
    cache.invalidate(CALLER.key_id or "")
    assert cache.get(TOKEN, NOW, None) is None
    off = KeyCache(0.0)
    off.put(TOKEN, CALLER, NOW, expires_at=None)
    assert off.get(TOKEN, NOW, None) is None


def test_the_least_recently_used_key_goes_beyond_the_limit() -> None:
    cache = KeyCache(10.0, max_entries=2)
    tokens = [f"vl_{i:016x}_" + "a" * 43 for i in range(3)]
    for t in tokens:
        cache.put(t, CALLER, NOW, expires_at=None)
    assert [cache.get(t, NOW, None) is not None for t in tokens] == [False, True, True]


@pytest.mark.asyncio
async def test_a_revoked_key_is_refused_at_once_by_its_process_and_after_the_bound_by_others(
    database_url: str,
) -> None:
    seed(database_url)
    clock = PinnedClock(NOW)
    admin = await make_key(database_url, "admin", name="admin")
    operator = await make_key(database_url, "operator", Scope.parse(["site:gym-a"]), name="screen")
    key_id = operator[3:19]
    first, second = app_at(database_url, clock), app_at(database_url, clock)  # two API workers
    assert first.state.settings.api_key_cache_s == 10.0
    async with serve(first, key=admin) as a, serve(second, key=admin) as b:
        for http in (a, b):  # verified once on each, then kept
            assert (await http.get("/v1/devices", headers=bearer(operator))).status_code == 200
            assert (await http.get("/v1/devices", headers=bearer(operator))).status_code == 200
        guard_a: Guard = first.state.guard
        guard_b: Guard = second.state.guard
        assert guard_a.key_cache.hits >= 1
        assert guard_b.key_cache.hits >= 1

        # a wrong secret of the same key is never taken from the cache
        wrong = operator[:-1] + ("x" if operator[-1] != "x" else "y")
        assert_problem(await b.get("/v1/devices", headers=bearer(wrong)), 401)

        assert (await a.post(f"/v1/keys/{key_id}/revoke")).status_code == 200
        # the revoking process refuses it at once
        assert_problem(await a.get("/v1/devices", headers=bearer(operator)), 401)
        # another process still holds it for at most the bound ...
        clock.advance(timedelta(seconds=9))
        assert (await b.get("/v1/devices", headers=bearer(operator))).status_code == 200
        # ... and refuses it once the bound has passed
        clock.advance(timedelta(seconds=1))
        assert_problem(await b.get("/v1/devices", headers=bearer(operator)), 401)
        assert_problem(await a.get("/v1/devices", headers=bearer(operator)), 401)


@pytest.mark.asyncio
async def test_a_key_revoked_outside_the_api_is_refused_after_the_bound(database_url: str) -> None:
    """`vitalab keys revoke` writes the database only: the API learns of it when its cached entry expires;
    with the cache off (0 s) at the very next request."""
    seed(database_url)
    clock = PinnedClock(NOW)
    operator = await make_key(database_url, "operator", Scope.parse(["site:gym-a"]), name="screen")
    cached, uncached = app_at(database_url, clock), app_at(database_url, clock, api_key_cache_s=0)
    async with serve(cached, key=operator) as a, serve(uncached, key=operator) as b:
        assert (await a.get("/v1/devices")).status_code == 200
        assert (await b.get("/v1/devices")).status_code == 200
        async with await psycopg.AsyncConnection.connect(database_url) as conn:
            assert await keys.revoke_key(conn, operator[3:19], NOW) is not None
        assert_problem(await b.get("/v1/devices"), 401)
        assert (await a.get("/v1/devices")).status_code == 200
        clock.advance(timedelta(seconds=10))
        assert_problem(await a.get("/v1/devices"), 401)
