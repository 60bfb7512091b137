"""The database side of the live hubs, over the app's connection pool (:mod:`api.queries.live`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime

from psycopg_pool import AsyncConnectionPool

from analytics.opening_hours import SiteHours
from api.live.floor import KnownDevice, hr_max_of
from api.queries import live as q
from api.queries import sites


class PoolSource:
    """Reads what a hub needs from the database; ``pool()`` is the app's pool (set once it has started)."""

    def __init__(self, pool: Callable[[], AsyncConnectionPool]) -> None:
        self._pool = pool

    async def site(self, site_id: str) -> tuple[list[KnownDevice], SiteHours]:
        async with self._pool().connection() as conn:
            devices = await q.known_devices(conn, site_id)
            hours = await sites.hours(conn, site_id)
        return devices, hours

    async def hours(self, site_id: str) -> SiteHours:
        async with self._pool().connection() as conn:
            return await sites.hours(conn, site_id)

    async def profiles(self, site_id: str, now: datetime) -> Mapping[str, float]:
        async with self._pool().connection() as conn:
            rows = await q.checked_in(conn, site_id)
        return {r.device_id: hr_max_of(r.hr_max_bpm, r.birth_year, now.year) for r in rows}
