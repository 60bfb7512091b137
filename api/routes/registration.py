"""Devices and gateways of a site, registered by the site's integrators (and admins): each gets its own MQTT
login, shown once, revoked when it is retired (:mod:`api.services.registration`)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Request, Response, status

from api import pagination
from api.deps import ConnDep, NowDep
from api.errors import responses
from api.pagination import CursorParam, PageLimit
from api.params import DeviceId, SiteId
from api.queries import registration as q
from api.routes.lookup import require_site
from api.security import CallerDep
from api.services import registration as service
from api.site_models import (
    AttachIn,
    DeviceRegistrationIn,
    DeviceRegistrationOut,
    GatewayRegistrationIn,
    GatewayRegistrationOut,
    RegisteredDevice,
    RegisteredGateway,
)
from vitalab.broker import MosquittoAuth
from vitalab.wire.topics import ID_PATTERN

router = APIRouter(prefix="/v1/sites/{site_id}", tags=["registration"], responses=responses(404, 422))

GatewayId = Annotated[str, Path(pattern=ID_PATTERN, description="a gateway id")]
SHOWN_ONCE = "no-store"
"""``Cache-Control`` of answers that may hold a password."""


async def get_broker(request: Request) -> MosquittoAuth | None:
    """The broker's account store (None: broker logins are managed outside vitalab)."""
    auth: MosquittoAuth | None = request.app.state.broker_auth
    return auth


BrokerDep = Annotated[MosquittoAuth | None, Depends(get_broker)]


@router.get("/devices", response_model=list[RegisteredDevice], responses=pagination.PAGED)
async def list_registrations(
    conn: ConnDep,
    caller: CallerDep,
    request: Request,
    response: Response,
    site_id: SiteId,
    limit: PageLimit = 1000,
    cursor: CursorParam = None,
) -> list[RegisteredDevice]:
    """The site's devices by id: registered, retired, or only heard of (``registered_at`` null)."""
    await require_site(conn, site_id, "path.site_id", caller)
    page = await q.list_devices(conn, site_id, pagination.decode(cursor, q.DEVICE_KEYSET), limit)
    pagination.link(request, response, page)
    return page.rows


@router.post(
    "/devices",
    response_model=DeviceRegistrationOut,
    status_code=status.HTTP_201_CREATED,
    responses=responses(409),
)
async def register_device(
    conn: ConnDep,
    caller: CallerDep,
    auth: BrokerDep,
    now: NowDep,
    response: Response,
    site_id: SiteId,
    body: DeviceRegistrationIn,
) -> DeviceRegistrationOut:
    """Register a device at the site and issue its MQTT login: username = device id, the password in this
    answer only (the broker keeps a hash). The device may publish its own topics under this site and read
    nothing. With ``gateway_id`` it speaks through that gateway instead, which may publish for it from now
    on. A device heard of before at this site, or retired, is registered (again) with a new login; an id
    registered already, or taken at another site, is 409."""
    response.headers["Cache-Control"] = SHOWN_ONCE
    return await service.register_device(conn, auth, caller, site_id, body, now)


@router.get("/gateways", response_model=list[RegisteredGateway], responses=pagination.PAGED)
async def list_gateways(
    conn: ConnDep,
    caller: CallerDep,
    request: Request,
    response: Response,
    site_id: SiteId,
    limit: PageLimit = 1000,
    cursor: CursorParam = None,
) -> list[RegisteredGateway]:
    """The site's gateways by id, with the registered devices attached to each."""
    await require_site(conn, site_id, "path.site_id", caller)
    page = await q.list_gateways(conn, site_id, pagination.decode(cursor, q.GATEWAY_KEYSET), limit)
    pagination.link(request, response, page)
    return page.rows


@router.post(
    "/gateways",
    response_model=GatewayRegistrationOut,
    status_code=status.HTTP_201_CREATED,
    responses=responses(409),
)
async def register_gateway(
    conn: ConnDep,
    caller: CallerDep,
    auth: BrokerDep,
    now: NowDep,
    response: Response,
    site_id: SiteId,
    body: GatewayRegistrationIn,
) -> GatewayRegistrationOut:
    """Register a gateway at the site with the registered devices it publishes for, and issue its MQTT login
    (username = gateway id; the password in this answer only). It may publish its status and the telemetry,
    state and meta of its devices, and read their raw frames."""
    response.headers["Cache-Control"] = SHOWN_ONCE
    return await service.register_gateway(conn, auth, caller, site_id, body.id, body.devices, now)


@router.post(
    "/gateways/{gateway_id}/devices", response_model=GatewayRegistrationOut, responses=responses(409)
)
async def attach_devices(
    conn: ConnDep, caller: CallerDep, auth: BrokerDep, site_id: SiteId, gateway_id: GatewayId, body: AttachIn
) -> GatewayRegistrationOut:
    """The gateway publishes for these registered devices of the site too (a device attached to another
    gateway moves)."""
    return await service.attach_devices(conn, auth, caller, site_id, gateway_id, body.devices)


@router.post("/gateways/{gateway_id}/rotate", response_model=GatewayRegistrationOut, responses=responses(409))
async def rotate_gateway(
    conn: ConnDep,
    caller: CallerDep,
    auth: BrokerDep,
    response: Response,
    site_id: SiteId,
    gateway_id: GatewayId,
) -> GatewayRegistrationOut:
    """A new password for the gateway's login; the old one stops working, its open connection is dropped."""
    response.headers["Cache-Control"] = SHOWN_ONCE
    return await service.rotate_gateway(conn, auth, caller, site_id, gateway_id)


@router.post("/gateways/{gateway_id}/retire", response_model=GatewayRegistrationOut)
async def retire_gateway(
    conn: ConnDep, caller: CallerDep, auth: BrokerDep, now: NowDep, site_id: SiteId, gateway_id: GatewayId
) -> GatewayRegistrationOut:
    """Retire the gateway: its login is revoked and its connection dropped; its devices stay registered."""
    return await service.retire_gateway(conn, auth, caller, site_id, gateway_id, now)


# (after the gateways: the order of the OpenAPI document, which tests/api/test_bad_input.py walks in order)
@router.post("/devices/{device_id}/rotate", response_model=DeviceRegistrationOut, responses=responses(409))
async def rotate_device(
    conn: ConnDep,
    caller: CallerDep,
    auth: BrokerDep,
    response: Response,
    site_id: SiteId,
    device_id: DeviceId,
) -> DeviceRegistrationOut:
    """A new password for the device's login (a login of its own is made for a device that spoke only
    through a gateway); the old password stops working, and its open connection is dropped."""
    response.headers["Cache-Control"] = SHOWN_ONCE
    return await service.rotate_device(conn, auth, caller, site_id, device_id)


@router.post("/devices/{device_id}/retire", response_model=DeviceRegistrationOut)
async def retire_device(
    conn: ConnDep, caller: CallerDep, auth: BrokerDep, now: NowDep, site_id: SiteId, device_id: DeviceId
) -> DeviceRegistrationOut:
    """Retire the device: its login is revoked and its open connection dropped, its gateway no longer
    publishes for it; its data stays, and its id stays bound to this site. Retiring again changes nothing."""
    return await service.retire_device(conn, auth, caller, site_id, device_id, now)
