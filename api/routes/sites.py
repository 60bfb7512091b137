"""Per-site analytics for operators: equipment utilisation, occupancy over the day, vitality aggregates with
small groups suppressed (definitions in analytics/site.py; computed in api/services/sites.py)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, Final

from fastapi import APIRouter, Query
from psycopg import AsyncConnection

from api import report_cache
from api.deps import NowDep, ReadConnDep, SettingsDep
from api.errors import invalid, not_found, responses
from api.models import SiteOccupancy, SiteUtilisation, SiteVitality
from api.params import QUERY_EARLIEST, Since, SinceDay, SiteId, Until, UntilDay, check_range
from api.queries import sites
from api.report_cache import ReportCacheDep
from api.security import Caller, CallerDep
from api.services import sites as reports

router = APIRouter(prefix="/v1/sites", tags=["analytics"], responses=responses(404, 422))

MAX_HOURS: Final = 31 * 24
MAX_OCCUPANCY_DAYS: Final = 366
MAX_VITALITY_DAYS: Final = 5 * 366


def _range(
    since: datetime | None, until: datetime | None, now: datetime, default: timedelta
) -> tuple[datetime, datetime]:
    """``[since, until)`` with defaults (until: now; since: ``default`` before until), not before 2000."""
    until = until or now
    since = since or max(until - default, QUERY_EARLIEST)
    check_range(since, until)
    return since, until


async def _timezone(conn: AsyncConnection, site_id: str, caller: Caller) -> str:
    """The site's timezone; 404 for an unknown site and one out of the caller's scope alike."""
    tz = await sites.timezone(conn, site_id) if caller.can_site(site_id) else None
    if tz is None:
        raise not_found("site", site_id, field="path.site_id")
    return tz


@router.get("/{site_id}/utilisation", response_model=SiteUtilisation)
async def utilisation(
    conn: ReadConnDep,
    caller: CallerDep,
    now: NowDep,
    site_id: SiteId,
    since: Since = None,
    until: Until = None,
) -> SiteUtilisation:
    """Per device and UTC hour of ``[since, until)`` (default: the last 24 h; at most 31 days): seconds in a
    session, the share of the hour, and minutes with any sample. Hours without activity are 0."""
    since, until = _range(since, until, now, timedelta(hours=24))
    if reports.hour_span(since, until)[1] > MAX_HOURS:
        raise invalid("query.since", f"at most {MAX_HOURS} hours per request")
    await _timezone(conn, site_id, caller)
    return await reports.utilisation(conn, site_id, since, until)


@router.get("/{site_id}/occupancy", response_model=SiteOccupancy)
async def occupancy(
    conn: ReadConnDep,
    caller: CallerDep,
    now: NowDep,
    cache: ReportCacheDep,
    site_id: SiteId,
    since: Since = None,
    until: Until = None,
    slot_min: Annotated[int, Query(ge=5, le=60, description="5, 10, 15, 20, 30 or 60")] = 15,
) -> SiteOccupancy:
    """Occupancy over the day in the site's local time, averaged per weekday over ``[since, until)``
    (default: the last 28 days; at most 366): machines in a session (time-weighted) and distinct participants
    per slot."""
    if 60 % slot_min:
        raise invalid("query.slot_min", "slot_min must divide an hour (5, 10, 15, 20, 30 or 60)")
    since, until = _range(since, until, now, timedelta(days=28))
    if until - since > timedelta(days=MAX_OCCUPANCY_DAYS):
        raise invalid("query.since", f"at most {MAX_OCCUPANCY_DAYS} days per request")
    tz_name = await _timezone(conn, site_id, caller)
    return await report_cache.occupancy(conn, cache, site_id, tz_name, since, until, slot_min)


@router.get("/{site_id}/vitality", response_model=SiteVitality)
async def vitality(
    conn: ReadConnDep,
    caller: CallerDep,
    settings: SettingsDep,
    now: NowDep,
    cache: ReportCacheDep,
    site_id: SiteId,
    since: SinceDay = None,
    until: UntilDay = None,
    breakdown: reports.Breakdown = "none",
    k: Annotated[int | None, Query(ge=2, le=1_000_000)] = None,
) -> SiteVitality:
    """Per ISO week (Monday) of ``[since, until]`` (default: the last 8 weeks; at most 5 years) over the
    site's members with at least one session that week: sessions per member, median weekly load (TRIMP),
    median MVPA minutes, mean WHO moderate-equivalent minutes and the share reaching 150. A cell of fewer than
    ``k`` members (the configured minimum unless a larger ``k`` is asked for) is suppressed, and so are the
    smallest other cells of its week until the suppressed ones hold at least ``k`` members together (no
    differencing against the week's total, which is always returned as group ``all``)."""
    until = until or now.date()
    since = since or max(until - timedelta(weeks=8), QUERY_EARLIEST.date())
    check_range(since, until, inclusive=True)
    if (until - since).days > MAX_VITALITY_DAYS:
        raise invalid("query.since", f"at most {MAX_VITALITY_DAYS} days per request")
    await _timezone(conn, site_id, caller)
    k_used = max(settings.analytics_k_anonymity, k or 0)
    return await report_cache.vitality(conn, cache, site_id, since, until, breakdown, k_used)
