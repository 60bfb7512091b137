"""Fleet health and maintenance for operators: each device's health (status, last heard, firmware, battery,
machine status and error codes, odometer, running hours, service due), alerts, services, and the settings
behind them (opening hours, service thresholds, the alert webhook). Definitions: analytics/fleet.py."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Final, Literal

from fastapi import APIRouter, Body, Query, Request, Response, status
from psycopg import AsyncConnection
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from analytics import opening_hours as opening_hours_rules
from analytics.opening_hours import WEEKDAYS, Weekday
from api import pagination
from api.deps import ConnDep, NowDep, ReadConnDep, SettingsDep
from api.errors import invalid, not_found, responses
from api.models import TEXT
from api.pagination import CursorParam, PageLimit
from api.params import DeviceId, Since, SiteId, Until, check_range, check_written
from api.queries import fleet, registration, sites
from api.routes.lookup import require_device
from api.security import Caller, CallerDep
from api.site_models import SiteOut
from vitalab.wire.registry import DeviceKind

router = APIRouter(tags=["fleet"], responses=responses(404, 422))

DeviceStatus = Literal["online", "offline", "error", "quarantined"]
AlertKind = Literal["silent", "service_due", "clock_skew", "dead_letters", "gateway_offline"]
CLOCK: Final = r"^(([01][0-9]|2[0-3]):[0-5][0-9]|24:00)$"


class FleetDevice(BaseModel):
    device_id: str
    kind: DeviceKind | None
    vendor: str | None
    model: str | None
    firmware: str | None
    transport: str | None
    status: DeviceStatus
    """``quarantined`` (refused by the ingester), ``offline`` (said so, or silent longer than
    ``device_offline_after_s``), ``error`` (online, reporting error codes), else ``online``."""
    online: bool
    last_heard: datetime | None
    """Device time of its newest sample or state."""
    last_seen: datetime | None
    """Device time of its newest sample."""
    battery_pct: float | None
    """From its newest state (null: not reported)."""
    training: str | None
    """The machine's status: FTMS training status / ANT+ FE state, as its newest state said."""
    errors: list[str]
    """The machine's error codes (FTMS machine status, ANT+ FE), as its newest state said."""
    odometer_km: float | None
    """Machines: distance over its whole history (null: not a machine, or not counted yet)."""
    running_h: float | None
    km_since_service: float | None
    hours_since_service: float | None
    last_service_at: datetime | None
    service_km: float | None
    """The threshold of its kind and model (null: none)."""
    service_hours: float | None
    service_due: bool
    counted_at: datetime | None
    """When the analytics job last counted its usage."""
    alerts: list[AlertKind]
    """Its open alerts."""


class FleetGateway(BaseModel):
    gateway_id: str
    online: bool
    last_seen: datetime | None


class Fleet(BaseModel):
    site_id: str
    devices: list[FleetDevice]
    gateways: list[FleetGateway]


class AlertOut(BaseModel):
    alert_id: int
    site_id: str
    subject: Literal["device", "gateway", "site"]
    subject_id: str
    kind: AlertKind
    started_at: datetime
    ended_at: datetime | None
    """null while the alert is active."""
    detail: dict[str, Any]


class ServiceIn(BaseModel):
    """A service of the device at ``serviced_at`` (default: now): its counters since the last service start
    again from there."""

    model_config = ConfigDict(extra="forbid")

    serviced_at: AwareDatetime | None = None
    note: str | None = Field(default=None, max_length=1000, pattern=r"^[^\x00]*$")


class ServiceOut(BaseModel):
    service_id: int
    device_id: str
    serviced_at: datetime
    note: str | None
    recorded_at: datetime
    recorded_by: str | None


class Threshold(BaseModel):
    """Distance and running time between services of a kind of machine (``model`` ``*``: every model without
    a row of its own). Neither ``km`` nor ``hours``: no threshold (PUT removes the row)."""

    model_config = ConfigDict(extra="forbid")

    kind: DeviceKind
    model: str = Field(default="*", min_length=1, max_length=64, pattern=TEXT)
    km: float | None = Field(default=None, ge=0.001, le=1_000_000)
    hours: float | None = Field(default=None, ge=0.001, le=1_000_000)


class OpeningPeriod(BaseModel):
    model_config = ConfigDict(extra="forbid")

    weekday: int = Field(ge=1, le=7, description="1 Monday .. 7 Sunday")
    opens: str = Field(pattern=CLOCK, description="local time, HH:MM")
    closes: str = Field(pattern=CLOCK, description="local time, HH:MM; 24:00 is the end of the day")

    @model_validator(mode="after")
    def _in_order(self) -> OpeningPeriod:
        if _seconds(self.closes) <= _seconds(self.opens):
            raise ValueError("closes must be after opens (a night across midnight is two periods)")
        return self


class OpeningHours(BaseModel):
    """When the site is open, in its local time: the site's ``opening_hours`` (as ``GET``/``PATCH
    /v1/sites/{site_id}`` show and set them) as a list of periods. No periods: open around the clock. Devices
    and gateways are expected to report only while it is open (alerts, the live floor)."""

    model_config = ConfigDict(extra="forbid")

    periods: list[OpeningPeriod] = Field(max_length=7 * 24)


class OpeningHoursOut(OpeningHours):
    site_id: str
    timezone: str
    always_open: bool
    """No hours set (``opening_hours`` null): open around the clock, no periods. False without periods: closed
    every day (``opening_hours`` ``{}``, which only ``PATCH /v1/sites/{site_id}`` sets)."""


class WebhookIn(BaseModel):
    """Where the site's alerts are posted (JSON, ``X-Vitalab-Delivery`` header); null removes it."""

    model_config = ConfigDict(extra="forbid")

    url: str | None = Field(pattern=r"^https?://[^\x00-\x20\x7f]+$", max_length=2000)


class WebhookOut(BaseModel):
    site_id: str
    url: str | None
    updated_at: datetime | None


def _seconds(clock: str) -> float:
    h, m = clock.split(":")
    return int(h) * 3600 + int(m) * 60.0


async def _site(conn: AsyncConnection, site_id: str, caller: Caller) -> str:
    """The site's timezone; 404 for an unknown site and one out of the caller's scope alike."""
    tz = await sites.timezone(conn, site_id) if caller.can_site(site_id) else None
    if tz is None:
        raise not_found("site", site_id, field="path.site_id")
    return tz


def _status(row: fleet.FleetRow) -> DeviceStatus:
    if row.quarantined:
        return "quarantined"
    if not row.online:
        return "offline"
    return "error" if row.errors else "online"


def _due(row: fleet.FleetRow) -> bool:
    by_km = row.threshold_km is not None and (row.service_distance_m or 0) >= row.threshold_km * 1000
    by_hours = row.threshold_hours is not None and (row.service_running_s or 0) >= row.threshold_hours * 3600
    return by_km or by_hours


def _per(value: float | None, unit: float) -> float | None:
    return None if value is None else value / unit


@router.get("/v1/sites/{site_id}/fleet", response_model=Fleet)
async def site_fleet(
    conn: ReadConnDep, caller: CallerDep, settings: SettingsDep, now: NowDep, site_id: SiteId
) -> Fleet:
    """Every device of the site with its health, by id: status and when it was last heard, firmware,
    battery, the machine's status and error codes, odometer and running hours (whole history and since the
    last service, counted by the analytics job), whether a service is due, and its open alerts; and the
    site's gateways."""
    await _site(conn, site_id, caller)
    rows = await fleet.fleet(conn, site_id, now, settings.device_offline_after_s)
    devices = [
        FleetDevice(
            device_id=r.device_id,
            kind=r.kind,
            vendor=r.vendor,
            model=r.model,
            firmware=r.firmware,
            transport=r.transport,
            status=_status(r),
            online=r.online,
            last_heard=r.last_heard,
            last_seen=r.last_seen,
            battery_pct=r.battery_pct,
            training=r.training,
            errors=r.errors,
            odometer_km=_per(r.distance_m, 1000),
            running_h=_per(r.running_s, 3600),
            km_since_service=_per(r.service_distance_m, 1000),
            hours_since_service=_per(r.service_running_s, 3600),
            last_service_at=r.last_service_at,
            service_km=r.threshold_km,
            service_hours=r.threshold_hours,
            service_due=_due(r),
            counted_at=r.counted_at,
            alerts=r.alerts,
        )
        for r in rows
    ]
    gateways = [
        FleetGateway(gateway_id=g[0], online=g[1], last_seen=g[2])
        for g in await fleet.gateways(conn, site_id)
    ]
    return Fleet(site_id=site_id, devices=devices, gateways=gateways)


@router.get("/v1/sites/{site_id}/alerts", response_model=list[AlertOut], responses=pagination.PAGED)
async def site_alerts(
    conn: ReadConnDep,
    caller: CallerDep,
    request: Request,
    response: Response,
    site_id: SiteId,
    active: Annotated[
        bool | None, Query(description="true: only open alerts; false: only ended ones")
    ] = None,
    since: Since = None,
    until: Until = None,
    limit: PageLimit = 1000,
    cursor: CursorParam = None,
) -> list[AlertOut]:
    """The site's alerts, newest first (by start): a device silent while expected, a service due, a clock
    skew, dead letters above the limit, a gateway offline; each with when it started and ended (null while
    active). ``since``/``until``: alerts active at some time in ``[since, until)``."""
    check_range(since, until)
    await _site(conn, site_id, caller)
    page = await fleet.alerts(
        conn, site_id, active, since, until, pagination.decode(cursor, fleet.ALERTS_KEYSET), limit
    )
    pagination.link(request, response, page)
    return [AlertOut.model_validate(a, from_attributes=True) for a in page.rows]


@router.post(
    "/v1/devices/{device_id}/serviced", response_model=ServiceOut, status_code=status.HTTP_201_CREATED
)
async def serviced(
    conn: ConnDep,
    caller: CallerDep,
    settings: SettingsDep,
    now: NowDep,
    device_id: DeviceId,
    body: Annotated[ServiceIn | None, Body()] = None,
) -> ServiceOut:
    """Record a service of the device (default: now): its distance and running hours since the last service
    start again from ``serviced_at`` (at once; the analytics job recounts what came after it)."""
    body = body or ServiceIn()
    at = check_written(body.serviced_at or now, "body.serviced_at", now, settings.max_future_s)
    await require_device(conn, device_id, "path.device_id", caller)
    row = await fleet.record_service(conn, device_id, at, body.note, now, caller.subject or caller.key_id)
    return ServiceOut.model_validate(row, from_attributes=True)


@router.get("/v1/service-thresholds", response_model=list[Threshold])
async def service_thresholds(conn: ReadConnDep) -> list[Threshold]:
    """Distance and running hours between services, per kind of machine and model."""
    return [Threshold.model_validate(t, from_attributes=True) for t in await fleet.thresholds(conn)]


@router.put("/v1/service-thresholds", response_model=Threshold)
async def set_service_threshold(conn: ConnDep, body: Threshold) -> Threshold:
    """Set the threshold of a kind and model (``*``: its default); neither ``km`` nor ``hours`` removes it."""
    row = await fleet.set_threshold(conn, body.kind, body.model, body.km, body.hours)
    return body if row is None else Threshold.model_validate(row, from_attributes=True)


@router.get("/v1/sites/{site_id}/opening-hours", response_model=OpeningHoursOut)
async def opening_hours(conn: ReadConnDep, caller: CallerDep, site_id: SiteId) -> OpeningHoursOut:
    """When the site is open (local time); no periods: around the clock."""
    found = await registration.get_site(conn, site_id) if caller.can_site(site_id) else None
    if found is None:
        raise not_found("site", site_id, field="path.site_id")
    return _hours_out(found)


@router.put("/v1/sites/{site_id}/opening-hours", response_model=OpeningHoursOut)
async def set_opening_hours(
    conn: ConnDep, caller: CallerDep, site_id: SiteId, body: OpeningHours
) -> OpeningHoursOut:
    """Replace the site's opening hours (a night across midnight is two periods; no periods: around the
    clock). The same as ``PATCH /v1/sites/{site_id}`` with ``opening_hours``: periods of a day must not
    overlap."""
    seen: set[tuple[int, str]] = set()
    for i, p in enumerate(body.periods):
        if (p.weekday, p.opens) in seen:
            raise invalid(f"body.periods.{i}", f"two periods open at {p.opens} on day {p.weekday}")
        seen.add((p.weekday, p.opens))
    hours = _checked(body.periods) if body.periods else None
    async with conn.transaction():
        updated = (
            await registration.update_site(conn, site_id, {"opening_hours": hours})
            if caller.can_site(site_id)
            else None
        )
    if updated is None:
        raise not_found("site", site_id, field="path.site_id")
    return _hours_out(updated)


def _checked(periods: list[OpeningPeriod]) -> opening_hours_rules.OpeningHours:
    """The periods as the site's opening hours (per weekday, in order); 422 naming the period that breaks a
    rule."""
    by_day: dict[Weekday, list[tuple[int, OpeningPeriod]]] = {}
    for i, p in enumerate(periods):
        by_day.setdefault(WEEKDAYS[p.weekday - 1], []).append((i, p))
    for day_periods in by_day.values():
        day_periods.sort(key=lambda ip: (ip[1].opens, ip[1].closes))
    raw = {day: [[p.opens, p.closes] for _, p in ps] for day, ps in by_day.items()}
    try:
        return opening_hours_rules.check(raw)
    except opening_hours_rules.OpeningHoursError as exc:
        # the path names the day's period in time order (``mon[1]``): back to its place in the body
        day, _, rest = exc.path.partition("[")
        found = by_day.get(day, [])  # type: ignore[call-overload]
        index = int(rest.rstrip("]")) if rest.rstrip("]").isdigit() else -1
        field = f"body.periods.{found[index][0]}" if 0 <= index < len(found) else "body.periods"
        raise invalid(field, exc.detail) from None


def _hours_out(site: SiteOut) -> OpeningHoursOut:
    hours = opening_hours_rules.SiteHours.stored(site.site_id, site.timezone, site.opening_hours).hours
    periods = [
        OpeningPeriod(weekday=WEEKDAYS.index(day) + 1, opens=opens, closes=closes)
        for day, intervals in (hours or {}).items()
        for opens, closes in intervals
    ]
    return OpeningHoursOut(
        site_id=site.site_id, timezone=site.timezone, always_open=hours is None, periods=periods
    )


@router.get("/v1/sites/{site_id}/webhook", response_model=WebhookOut)
async def site_webhook(conn: ReadConnDep, caller: CallerDep, site_id: SiteId) -> WebhookOut:
    """Where the site's alerts are posted (null: nowhere)."""
    await _site(conn, site_id, caller)
    row = await fleet.webhook(conn, site_id)
    return WebhookOut(
        site_id=site_id, url=row.url if row else None, updated_at=row.updated_at if row else None
    )


@router.put("/v1/sites/{site_id}/webhook", response_model=WebhookOut)
async def set_site_webhook(
    conn: ConnDep, caller: CallerDep, now: NowDep, site_id: SiteId, body: WebhookIn
) -> WebhookOut:
    """Post the site's alerts (opened and closed, JSON) to ``url``, or to nowhere (null). Deliveries are
    retried with backoff; ``X-Vitalab-Delivery`` identifies one (a repeat has the same)."""
    await _site(conn, site_id, caller)
    await fleet.set_webhook(conn, site_id, body.url, now)
    return WebhookOut(site_id=site_id, url=body.url, updated_at=now if body.url else None)
