"""Registering devices and gateways: the database row and the broker login, kept in step.

The database says which devices and gateways a site has (``registered_at``, ``retired_at``, a device's
gateway); the broker's account store (:class:`vitalab.broker.MosquittoAuth`, given to the API as
``app.state.broker_auth``) holds their logins, as hashes, and makes the broker reload. Each change runs in
one database transaction that holds the device's (or gateway's) row locked while the store is changed (in a
thread: the store locks a file and may wait for the broker's reload), so two requests for one device are
serialised. The order keeps the broker on the safe side: a login is revoked before the retirement is
committed, and a login issued for a registration that is then not committed is revoked again.

Without an account store (``VITALAB_BROKER_STATE_DIR`` unset and not `vitalab up`) the rows are written all
the same and the answers say ``broker: external``: this deployment's broker logins are managed outside
vitalab (the broker CLI, ``python -m vitalab.broker``, on the broker's host).

A device id is unique in the deployment and bound to its site for good (migration 0007), so an id taken at
another site answers 409 without naming that site; device ids, gateway ids and the platform's service
accounts share the broker's username namespace (409 as well).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import datetime
from typing import TypeVar

from psycopg import AsyncConnection

from api.errors import Problem, conflict, not_found
from api.queries import registration as q
from api.routes.lookup import require_site
from api.security import Caller
from api.site_models import (
    DeviceRegistrationIn,
    DeviceRegistrationOut,
    GatewayRegistrationOut,
    MqttLogin,
    RegisteredDevice,
    RegisteredGateway,
)
from vitalab.broker import (
    AccountExists,
    BrokerAuthError,
    DeviceAccount,
    InvalidAccount,
    IssuedCredential,
    MosquittoAuth,
    UnknownAccount,
    permissions,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")
EXTERNAL = (
    "broker logins of this deployment are managed outside vitalab (VITALAB_BROKER_STATE_DIR is not set)"
)


async def _store(call: Callable[[], T]) -> T:
    """A change of the account store, in a thread; its refusals as problems."""
    try:
        return await asyncio.to_thread(call)
    except AccountExists as exc:
        raise conflict(
            f"the broker username {exc.username!r} is taken by a {exc.role} account (device ids, gateway ids "
            "and the platform's service accounts share one namespace)"
        ) from None
    except InvalidAccount as exc:
        raise conflict(f"the broker refuses this: {exc.detail}") from None
    except UnknownAccount:
        raise
    except BrokerAuthError as exc:
        logger.error("broker account store: %s", exc)
        raise Problem(503, "the broker's account store is unavailable; try again shortly") from None


async def _quietly(call: Callable[[], object], what: str) -> None:
    """A change whose account may not exist (a device without a login of its own, a gateway whose login is
    managed elsewhere): that is no error."""
    try:
        await _store(call)
    except UnknownAccount as exc:
        logger.info("%s: %s (nothing to change on the broker)", what, exc)


def _login(auth: MosquittoAuth, issue: Callable[[], IssuedCredential]) -> MqttLogin:
    """Issue a login (in a thread) and say what it may publish."""
    issued = issue()
    account = auth.accounts().get(issued.username)
    topics = list(permissions(account).publish) if account is not None else []
    return MqttLogin(username=issued.username, password=issued.password, publishes=topics)


def _device_login(auth: MosquittoAuth, device_id: str, site_id: str) -> MqttLogin:
    """A new password for the device's own login, made if it has none (in a thread)."""

    def issue() -> IssuedCredential:
        existing = auth.accounts().get(device_id)
        if isinstance(existing, DeviceAccount) and existing.site == site_id:
            return auth.rotate(device_id)
        return auth.add_device(device_id, site_id)

    return _login(auth, issue)


@contextlib.asynccontextmanager
async def _undo_on_failure() -> AsyncIterator[list[Callable[[], object]]]:
    """Store changes to take back if the block (the database transaction around them) fails."""
    undo: list[Callable[[], object]] = []
    try:
        yield undo
    except BaseException:
        for step in reversed(undo):
            with contextlib.suppress(BrokerAuthError):
                await asyncio.to_thread(step)
        raise


async def _site_device(
    conn: AsyncConnection, caller: Caller, site_id: str, device_id: str
) -> RegisteredDevice:
    """The device ``device_id`` of the site (locked); 404 for an unknown site or device and for one out of
    the caller's scope alike."""
    await require_site(conn, site_id, "path.site_id", caller)
    device = await q.device_for_update(conn, device_id)
    if device is None or device.site_id != site_id:
        raise not_found("device", device_id, field="path.device_id")
    return device


async def _site_gateway(
    conn: AsyncConnection, caller: Caller, site_id: str, gateway_id: str
) -> RegisteredGateway:
    await require_site(conn, site_id, "path.site_id", caller)
    found = await q.gateway(conn, gateway_id, lock=True)
    if found is None or found.site_id != site_id:
        raise not_found("gateway", gateway_id, field="path.gateway_id")
    return found


def _active(registered_at: datetime | None, retired_at: datetime | None) -> bool:
    return registered_at is not None and retired_at is None


# --- devices ----------------------------------------------------------------------------------------------


async def register_device(
    conn: AsyncConnection,
    auth: MosquittoAuth | None,
    caller: Caller,
    site_id: str,
    body: DeviceRegistrationIn,
    now: datetime,
) -> DeviceRegistrationOut:
    device_id = body.id
    async with _undo_on_failure() as undo, conn.transaction():
        await require_site(conn, site_id, "path.site_id", caller)
        current = await q.device_for_update(conn, device_id)
        if current is not None and current.site_id != site_id:
            raise conflict(
                f"the device id {device_id!r} is taken (device ids are unique in the deployment)",
                field="body.id",
            )
        if current is not None and _active(current.registered_at, current.retired_at):
            raise conflict(
                f"{device_id!r} is registered already; POST .../devices/{device_id}/rotate issues a new "
                "password",
                field="body.id",
            )
        if body.gateway_id is not None:
            gateway = await q.gateway(conn, body.gateway_id)
            if gateway is None or gateway.site_id != site_id:
                raise not_found("gateway", body.gateway_id, field="body.gateway_id")
            if not _active(gateway.registered_at, gateway.retired_at):
                raise conflict(f"the gateway {body.gateway_id!r} is not registered", field="body.gateway_id")
        device = await q.register_device(
            conn, device_id, site_id, body.kind, body.vendor, body.model, body.gateway_id, now
        )
        assert device is not None  # the row is locked, and of this site
        if auth is None:
            return DeviceRegistrationOut(device=device, broker="external")
        if current is not None and current.gateway_id and current.gateway_id != body.gateway_id:
            old = current.gateway_id
            await _quietly(lambda: auth.detach(old, [device_id]), f"detaching {device_id} from {old}")
        if body.gateway_id is not None:
            gw = body.gateway_id
            await _quietly(lambda: auth.attach(gw, [device_id]), f"attaching {device_id} to {gw}")
            undo.append(lambda: auth.detach(gw, [device_id]))
            return DeviceRegistrationOut(device=device, broker="via_gateway")
        login = await _store(lambda: _device_login(auth, device_id, site_id))
        undo.append(lambda: auth.revoke(device_id))
        return DeviceRegistrationOut(device=device, broker="issued", mqtt=login)


async def rotate_device(
    conn: AsyncConnection,
    auth: MosquittoAuth | None,
    caller: Caller,
    site_id: str,
    device_id: str,
) -> DeviceRegistrationOut:
    """A new password for the device's own login (made if it has none, e.g. a device that spoke only through
    a gateway); the old one stops working at the broker's reload."""
    async with conn.transaction():
        device = await _site_device(conn, caller, site_id, device_id)
        if not _active(device.registered_at, device.retired_at):
            what = "retired" if device.retired_at is not None else "not registered"
            raise conflict(f"the device {device_id!r} is {what}; register it first", field="path.device_id")
        if auth is None:
            raise conflict(EXTERNAL)
        login = await _store(lambda: _device_login(auth, device_id, site_id))
        return DeviceRegistrationOut(device=device, broker="issued", mqtt=login)


async def retire_device(
    conn: AsyncConnection,
    auth: MosquittoAuth | None,
    caller: Caller,
    site_id: str,
    device_id: str,
    now: datetime,
) -> DeviceRegistrationOut:
    """Retire the device: its login is revoked (the broker drops its connection), its gateway no longer
    publishes for it, its data stays. Retiring it again changes nothing."""
    async with conn.transaction():
        device = await _site_device(conn, caller, site_id, device_id)
        if device.retired_at is None:
            retired = await q.retire_device(conn, device_id, now)
            assert retired is not None
            device = retired
        if auth is None:
            return DeviceRegistrationOut(device=device, broker="external")
        # before the commit: should the commit fail, the device stays registered without a login (retiring it
        # again completes it), never retired with one
        await _quietly(lambda: auth.revoke(device_id), f"revoking {device_id}")
        if device.gateway_id is not None:
            gw = device.gateway_id
            await _quietly(lambda: auth.detach(gw, [device_id]), f"detaching {device_id} from {gw}")
        return DeviceRegistrationOut(device=device, broker="revoked")


# --- gateways ---------------------------------------------------------------------------------------------


async def _attachable(
    conn: AsyncConnection, site_id: str, device_ids: Sequence[str]
) -> list[RegisteredDevice]:
    """The registered, not retired devices ``device_ids`` of the site (locked); 404 naming the first that is
    not (unknown, of another site or retired alike)."""
    wanted = list(dict.fromkeys(device_ids))
    found = {d.device_id: d for d in await q.devices_for_update(conn, wanted)}
    for i, device_id in enumerate(device_ids):
        device = found.get(device_id)
        if (
            device is None
            or device.site_id != site_id
            or not _active(device.registered_at, device.retired_at)
        ):
            raise not_found("registered device", device_id, field=f"body.devices.{i}")
    return [found[d] for d in wanted]


async def _gateway_login(auth: MosquittoAuth, conn: AsyncConnection, gateway_id: str) -> MqttLogin:
    """A new password for the gateway, with exactly the devices the database attaches to it."""
    stored = await q.gateway(conn, gateway_id)
    assert stored is not None
    site, devices = stored.site_id, stored.devices
    return await _store(lambda: _login(auth, lambda: auth.issue_gateway(gateway_id, site, devices)))


async def register_gateway(
    conn: AsyncConnection,
    auth: MosquittoAuth | None,
    caller: Caller,
    site_id: str,
    gateway_id: str,
    device_ids: Sequence[str],
    now: datetime,
) -> GatewayRegistrationOut:
    async with _undo_on_failure() as undo, conn.transaction():
        await require_site(conn, site_id, "path.site_id", caller)
        current = await q.gateway(conn, gateway_id, lock=True)
        if current is not None and current.site_id != site_id:
            raise conflict(
                f"the gateway id {gateway_id!r} is taken (gateway ids are unique in the deployment)",
                field="body.id",
            )
        if current is not None and _active(current.registered_at, current.retired_at):
            raise conflict(
                f"{gateway_id!r} is registered already; POST .../gateways/{gateway_id}/rotate issues a new "
                "password",
                field="body.id",
            )
        devices = await _attachable(conn, site_id, device_ids)
        assert await q.register_gateway(conn, gateway_id, site_id, now)
        await q.attach(conn, gateway_id, [d.device_id for d in devices])
        login = None
        if auth is not None:
            for device in devices:
                await _detach_elsewhere(auth, device, gateway_id)
            login = await _gateway_login(auth, conn, gateway_id)
            undo.append(lambda: auth.revoke(gateway_id))
        gateway = await q.gateway(conn, gateway_id)
        assert gateway is not None
        return GatewayRegistrationOut(
            gateway=gateway, broker="external" if login is None else "issued", mqtt=login
        )


async def _detach_elsewhere(auth: MosquittoAuth, device: RegisteredDevice, gateway_id: str) -> None:
    old = device.gateway_id
    if old is not None and old != gateway_id:
        await _quietly(
            lambda: auth.detach(old, [device.device_id]), f"detaching {device.device_id} from {old}"
        )


async def attach_devices(
    conn: AsyncConnection,
    auth: MosquittoAuth | None,
    caller: Caller,
    site_id: str,
    gateway_id: str,
    device_ids: Sequence[str],
) -> GatewayRegistrationOut:
    """Let the gateway publish for these devices of its site too (a device moves from the gateway it had)."""
    async with conn.transaction():
        gateway = await _site_gateway(conn, caller, site_id, gateway_id)
        if not _active(gateway.registered_at, gateway.retired_at):
            raise conflict(f"the gateway {gateway_id!r} is not registered", field="path.gateway_id")
        devices = await _attachable(conn, site_id, device_ids)
        await q.attach(conn, gateway_id, [d.device_id for d in devices])
        if auth is not None:
            for device in devices:
                await _detach_elsewhere(auth, device, gateway_id)
            attached = [d.device_id for d in devices]
            await _quietly(lambda: auth.attach(gateway_id, attached), f"attaching to {gateway_id}")
        updated = await q.gateway(conn, gateway_id)
        assert updated is not None
        return GatewayRegistrationOut(gateway=updated, broker="external" if auth is None else "updated")


async def rotate_gateway(
    conn: AsyncConnection, auth: MosquittoAuth | None, caller: Caller, site_id: str, gateway_id: str
) -> GatewayRegistrationOut:
    """A new password for the gateway (its login made if it has none), with the devices attached to it."""
    async with conn.transaction():
        gateway = await _site_gateway(conn, caller, site_id, gateway_id)
        if not _active(gateway.registered_at, gateway.retired_at):
            what = "retired" if gateway.retired_at is not None else "not registered"
            raise conflict(
                f"the gateway {gateway_id!r} is {what}; register it first", field="path.gateway_id"
            )
        if auth is None:
            raise conflict(EXTERNAL)
        login = await _gateway_login(auth, conn, gateway_id)
        return GatewayRegistrationOut(gateway=gateway, broker="issued", mqtt=login)


async def retire_gateway(
    conn: AsyncConnection,
    auth: MosquittoAuth | None,
    caller: Caller,
    site_id: str,
    gateway_id: str,
    now: datetime,
) -> GatewayRegistrationOut:
    """Retire the gateway: its login is revoked (the broker drops its connection); its devices stay
    registered (attach them to another gateway, or give them logins of their own)."""
    async with conn.transaction():
        gateway = await _site_gateway(conn, caller, site_id, gateway_id)
        if gateway.retired_at is None:
            await q.retire_gateway(conn, gateway_id, now)
            retired = await q.gateway(conn, gateway_id)
            assert retired is not None
            gateway = retired
        if auth is None:
            return GatewayRegistrationOut(gateway=gateway, broker="external")
        await _quietly(lambda: auth.revoke(gateway_id), f"revoking {gateway_id}")
        return GatewayRegistrationOut(gateway=gateway, broker="revoked")
