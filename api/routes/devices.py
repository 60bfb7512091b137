"""Devices, their samples, RR intervals and data quality."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from api import pagination
from api.deps import NowDep, ReadConnDep, SettingsDep
from api.errors import not_found, responses
from api.models import Device, DeviceQualityDay, RrOut, SampleOut
from api.pagination import CursorParam, LargePageLimit, PageLimit
from api.params import DeviceId, Since, SinceDay, SinceRequired, SiteFilter, Until, UntilDay, check_range
from api.queries import devices, samples
from api.routes.lookup import require_device, require_site
from api.security import CallerDep, scope_sites

router = APIRouter(prefix="/v1/devices", tags=["devices"], responses=responses(404, 422))


@router.get("", response_model=list[Device], responses=pagination.PAGED)
async def list_devices(
    conn: ReadConnDep,
    caller: CallerDep,
    settings: SettingsDep,
    now: NowDep,
    request: Request,
    response: Response,
    site: SiteFilter = None,
    limit: PageLimit = 1000,
    cursor: CursorParam = None,
) -> list[Device]:
    """Devices by id (of the caller's sites), with ``online`` derived from their state and how long they
    have been silent."""
    await require_site(conn, site, "query.site", caller)
    page = await devices.list_devices(
        conn,
        site,
        now,
        settings.device_offline_after_s,
        pagination.decode(cursor, devices.KEYSET),
        limit,
        sites=scope_sites(caller),
    )
    pagination.link(request, response, page)
    return page.rows


@router.get("/{device_id}", response_model=Device)
async def get_device(
    conn: ReadConnDep, caller: CallerDep, settings: SettingsDep, now: NowDep, device_id: DeviceId
) -> Device:
    device = await devices.get_device(conn, device_id, now, settings.device_offline_after_s)
    if device is None or not caller.can_site(device.site_id):
        raise not_found("device", device_id, field="path.device_id")
    return device


@router.get("/{device_id}/samples", response_model=list[SampleOut], responses=pagination.PAGED)
async def device_samples(
    conn: ReadConnDep,
    caller: CallerDep,
    request: Request,
    response: Response,
    device_id: DeviceId,
    since: Since = None,
    until: Until = None,
    limit: LargePageLimit = 1000,
    cursor: CursorParam = None,
) -> list[SampleOut]:
    """Samples of one device in time order, in ``[since, until)``. With neither bound, the newest page
    (``Link: rel="prev"`` leads to older samples); otherwise from ``since`` on (``rel="next"``)."""
    check_range(since, until)
    await require_device(conn, device_id, "path.device_id", caller)
    default = pagination.FROM_END if since is None and until is None else pagination.FROM_START
    page = await samples.device_samples(
        conn, device_id, since, until, pagination.decode(cursor, samples.KEYSET, default), limit
    )
    pagination.link(request, response, page)
    return page.rows


@router.get("/{device_id}/rr", response_model=list[RrOut], responses=pagination.PAGED)
async def device_rr(
    conn: ReadConnDep,
    caller: CallerDep,
    request: Request,
    response: Response,
    device_id: DeviceId,
    since: SinceRequired,
    until: Until = None,
    limit: LargePageLimit = 10_000,
    cursor: CursorParam = None,
) -> list[RrOut]:
    """RR intervals (ms) of one device in ``[since, until)``, oldest first (by time, then index)."""
    check_range(since, until)
    await require_device(conn, device_id, "path.device_id", caller)
    page = await samples.rr(
        conn, device_id, since, until, pagination.decode(cursor, samples.RR_KEYSET), limit
    )
    pagination.link(request, response, page)
    return page.rows


@router.get("/{device_id}/quality", response_model=list[DeviceQualityDay], responses=pagination.PAGED)
async def device_quality(
    conn: ReadConnDep,
    caller: CallerDep,
    request: Request,
    response: Response,
    device_id: DeviceId,
    since: SinceDay = None,
    until: UntilDay = None,
    limit: PageLimit = 1000,
    cursor: CursorParam = None,
) -> list[DeviceQualityDay]:
    """Data quality per completed UTC day in ``[since, until]`` (analytics/device_quality.py): duplicates and
    late and backfilled samples, clock skew, sampling period, dropouts, gaps, received vs expected samples."""
    check_range(since, until, inclusive=True)
    await require_device(conn, device_id, "path.device_id", caller)
    page = await devices.quality(
        conn, device_id, since, until, pagination.decode(cursor, devices.QUALITY_KEYSET), limit
    )
    pagination.link(request, response, page)
    return page.rows
