"""Site reports computed once and served again while what they are computed from is unchanged.

Occupancy over 28 days reads tens of thousands of sessions and costs a quarter of a second of CPU, vitality
over 8 weeks thousands of member-weeks: far more than any other operator endpoint. Their inputs change only
when the analytics job rewrites sessions and daily series (or an erasure deletes some). A report is kept
under its key (the report and its parameters; for occupancy the range widened to whole slots, which is all
the computation sees) together with a fingerprint of its inputs (:mod:`api.queries.report_inputs`, one
cheap read); a request whose fingerprint matches is served the kept report, any other recomputes it. At most
``max_entries`` reports are kept (least recently used out); concurrent requests for the same missing report
compute it once. One cache per API process.
"""

from __future__ import annotations

import asyncio
import math
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from datetime import UTC, date, datetime
from typing import Annotated, Any, Final

from fastapi import Depends, Request
from psycopg import AsyncConnection

from analytics.version import ALGORITHM_VERSION
from api.models import SiteOccupancy, SiteVitality
from api.queries import report_inputs
from api.services import sites as reports

MAX_ENTRIES: Final = 256


class ReportCache:
    def __init__(self, max_entries: int = MAX_ENTRIES) -> None:
        self._entries: OrderedDict[Hashable, tuple[Hashable, Any]] = OrderedDict()
        self._locks: dict[Hashable, asyncio.Lock] = {}
        self._max = max_entries
        self.hits = 0
        self.misses = 0

    async def reuse(self, key: Hashable, fingerprint: Hashable, compute: Callable[[], Awaitable[Any]]) -> Any:
        """The report kept under ``key`` if it was computed from inputs with this ``fingerprint``, else
        ``compute()`` (kept for the next request)."""
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            kept = self._entries.get(key)
            if kept is not None and kept[0] == fingerprint:
                self._entries.move_to_end(key)
                self.hits += 1
                return kept[1]
            self.misses += 1
            value = await compute()
            self._entries[key] = (fingerprint, value)
            self._entries.move_to_end(key)
            while len(self._entries) > self._max:
                old, _ = self._entries.popitem(last=False)
                self._locks.pop(old, None)
            return value


async def get_report_cache(request: Request) -> ReportCache:
    cache: ReportCache = request.app.state.report_cache
    return cache


ReportCacheDep = Annotated[ReportCache, Depends(get_report_cache)]


async def occupancy(
    conn: AsyncConnection,
    cache: ReportCache,
    site_id: str,
    tz_name: str,
    since: datetime,
    until: datetime,
    slot_min: int,
) -> SiteOccupancy:
    """:func:`api.services.sites.occupancy`, reused while its sessions and devices are unchanged. The
    computation sees the range widened to whole slots (the same edges as it computes), so one kept report
    answers every range with the same edges; ``since`` and ``until`` are the request's."""
    slot_s = slot_min * 60.0
    e0 = datetime.fromtimestamp(math.floor(since.timestamp() / slot_s) * slot_s, UTC)
    e1 = datetime.fromtimestamp(math.ceil(until.timestamp() / slot_s) * slot_s, UTC)
    fingerprint = await report_inputs.occupancy(conn, site_id, ALGORITHM_VERSION, e0, e1)
    report: SiteOccupancy = await cache.reuse(
        ("occupancy", site_id, tz_name, e0, e1, slot_min, ALGORITHM_VERSION),
        fingerprint,
        lambda: reports.occupancy(conn, site_id, tz_name, since, until, slot_min),
    )
    return report.model_copy(update={"since": since, "until": until})


async def vitality(
    conn: AsyncConnection,
    cache: ReportCache,
    site_id: str,
    since: date,
    until: date,
    breakdown: reports.Breakdown,
    k: int,
) -> SiteVitality:
    """:func:`api.services.sites.vitality`, reused while the site's member-days of the range are unchanged
    (members' profiles are written once, at registration; an erased member's days go with them)."""
    fingerprint = await report_inputs.vitality(conn, site_id, since, until)
    report: SiteVitality = await cache.reuse(
        ("vitality", site_id, since, until, breakdown, k),
        fingerprint,
        lambda: reports.vitality(conn, site_id, since, until, breakdown, k),
    )
    return report
