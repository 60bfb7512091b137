"""Broker accounts and what each may publish and read (pure; no files, no broker).

Identity rule: a device id is unique in the deployment and bound to one site. A device logs in with
username = device id and may publish only its own topics under its own site; a gateway is bound to one
site and may publish for the devices attached to it (which then belong to that site too). Device ids,
gateway ids and service names share one username namespace.

| role      | publishes                                                  | reads                          |
|-----------|------------------------------------------------------------|--------------------------------|
| device    | ``vitalab/v1/{site}/dev/{id}/{telemetry,state,meta,raw}``  | its own ``dev/{id}/ack``       |
| gateway   | its ``gw/{id}/status``; telemetry/state/meta of its devices | its devices' raw, ``gw/{id}/ack``|
| ingester  | commit acks: ``gw/+/ack`` and ``dev/+/ack`` of its sites    | telemetry/state/meta/status    |
| live-view | nothing                                                    | the same                       |
| monitor   | nothing                                                    | ``$SYS/#``                     |
| simulator | telemetry/state/meta/status of any device/gateway of a site | the ack topics of its site    |

Commit acks (:mod:`vitalab.wire.acks`) say which telemetry of a sender is stored: only that sender reads
them.

Ingester and live-view accounts read every site or a given set of sites.

The simulator role exists for the demo stack's simulator, which publishes a whole simulated gym over one
connection per simulated gateway with device ids it makes up; prefer gateway accounts with their devices
listed wherever the ids are known in advance.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import TypeAlias

import msgspec
from paho.mqtt.client import topic_matches_sub

from vitalab.broker.credentials import parse_hash
from vitalab.broker.errors import AccountExists, InvalidAccount, PasswordHashError, UnknownAccount
from vitalab.wire.topics import (
    DEVICE_KINDS,
    ID_PATTERN,
    TopicKind,
    ack_subscription,
    device_ack_topic,
    device_topic,
    gateway_ack_topic,
    gateway_status_topic,
    subscription,
    valid_id,
)


class Role(StrEnum):
    DEVICE = "device"
    GATEWAY = "gateway"
    INGESTER = "ingester"
    LIVE_VIEW = "live-view"
    MONITOR = "monitor"
    SIMULATOR = "simulator"


class _Account(msgspec.Struct, frozen=True, kw_only=True, tag_field="role"):
    username: str
    password_hash: str


class DeviceAccount(_Account, frozen=True, kw_only=True, tag=Role.DEVICE.value):
    """A device that connects to the broker itself. ``username`` is the device id."""

    site: str


class GatewayAccount(_Account, frozen=True, kw_only=True, tag=Role.GATEWAY.value):
    """A gateway publishing for the devices attached to it. ``username`` is the gateway id."""

    site: str
    devices: frozenset[str] = frozenset()


class IngesterAccount(_Account, frozen=True, kw_only=True, tag=Role.INGESTER.value):
    sites: frozenset[str] | None = None
    """``None``: every site."""


class LiveViewAccount(_Account, frozen=True, kw_only=True, tag=Role.LIVE_VIEW.value):
    sites: frozenset[str] | None = None
    """``None``: every site."""


class MonitorAccount(_Account, frozen=True, kw_only=True, tag=Role.MONITOR.value):
    pass


class SimulatorAccount(_Account, frozen=True, kw_only=True, tag=Role.SIMULATOR.value):
    site: str


Account: TypeAlias = (
    DeviceAccount | GatewayAccount | IngesterAccount | LiveViewAccount | MonitorAccount | SimulatorAccount
)
SERVICE_ROLES = frozenset({Role.INGESTER, Role.LIVE_VIEW, Role.MONITOR, Role.SIMULATOR})

# what the platform's readers subscribe to (vitalab.wire.topics); raw frames are the gateways' business
READ_KINDS = (TopicKind.TELEMETRY, TopicKind.STATE, TopicKind.META, TopicKind.GATEWAY_STATUS)
# what a gateway (or the simulator) publishes for a device: decoded data, never raw frames
FORWARD_KINDS = (TopicKind.TELEMETRY, TopicKind.STATE, TopicKind.META)
_DEVICE_KINDS = tuple(k for k in TopicKind if k in DEVICE_KINDS)  # stable order


_ROLES: dict[type[_Account], Role] = {
    DeviceAccount: Role.DEVICE,
    GatewayAccount: Role.GATEWAY,
    IngesterAccount: Role.INGESTER,
    LiveViewAccount: Role.LIVE_VIEW,
    MonitorAccount: Role.MONITOR,
    SimulatorAccount: Role.SIMULATOR,
}


def role_of(account: Account) -> Role:
    return _ROLES[type(account)]


# --- topic filters -----------------------------------------------------------------------------------


def strip_share(topic_filter: str) -> str:
    """The filter of an MQTT 5 shared subscription (``$share/<group>/<filter>``), else the filter itself."""
    if topic_filter.startswith("$share/"):
        parts = topic_filter.split("/", 2)
        return parts[2] if len(parts) == 3 else ""
    return topic_filter


def filter_covers(allowed: str, requested: str) -> bool:
    """Does every topic that ``requested`` matches also match ``allowed``? (Both are MQTT filters.)"""
    a, r = allowed.split("/"), requested.split("/")
    for i, level in enumerate(a):
        if level == "#":
            # 'x/#' also matches 'x' itself, so 'requested' may stop right before the '#'
            return len(r) >= i
        if i >= len(r):
            return False
        if r[i] == "#":
            # 'requested' goes on with any number of levels here; only '+/#' against a bare '#' (both
            # match every topic of one level or more) covers that without a '#' at this level
            return i == 0 and a == ["+", "#"]
        if level != "+" and r[i] != level:
            return False
    return len(r) == len(a)


def _concrete(topic: str) -> bool:
    return bool(topic) and "+" not in topic and "#" not in topic


@dataclass(frozen=True, slots=True)
class Permissions:
    """Topic filters an account may publish to and read from."""

    publish: tuple[str, ...]
    read: tuple[str, ...]

    def may_publish(self, topic: str) -> bool:
        return _concrete(topic) and any(topic_matches_sub(f, topic) for f in self.publish)

    def may_read(self, topic: str) -> bool:
        """May a message published on ``topic`` be delivered to this account?"""
        return _concrete(topic) and any(topic_matches_sub(f, topic) for f in self.read)

    def may_subscribe(self, topic_filter: str) -> bool:
        """Is everything ``topic_filter`` could deliver readable? (Stricter than Mosquitto, which grants
        every SUBSCRIBE and checks each delivered message; the embedded broker uses this.)"""
        wanted = strip_share(topic_filter)
        return bool(wanted) and any(filter_covers(f, wanted) for f in self.read)


def _sites(sites: frozenset[str] | None) -> list[str]:
    return ["+"] if sites is None else sorted(sites)


def permissions(account: Account) -> Permissions:
    match account:
        case DeviceAccount(username=device, site=site):
            return Permissions(
                tuple(device_topic(site, device, k) for k in _DEVICE_KINDS), (device_ack_topic(site, device),)
            )
        case GatewayAccount(username=gateway, site=site, devices=devices):
            publish = [gateway_status_topic(site, gateway)]
            publish += [device_topic(site, d, k) for d in sorted(devices) for k in FORWARD_KINDS]
            read = [device_topic(site, d, TopicKind.RAW) for d in sorted(devices)]
            read.append(gateway_ack_topic(site, gateway))
            return Permissions(tuple(publish), tuple(read))
        case IngesterAccount(sites=sites):
            acks = tuple(ack_subscription(m, site=s) for s in _sites(sites) for m in ("gw", "dev"))
            return Permissions(
                acks, tuple(subscription(k, site=s) for s in _sites(sites) for k in READ_KINDS)
            )
        case LiveViewAccount(sites=sites):
            return Permissions((), tuple(subscription(k, site=s) for s in _sites(sites) for k in READ_KINDS))
        case MonitorAccount():
            return Permissions((), ("$SYS/#",))
        case SimulatorAccount(site=site):
            publish = [subscription(k, site=site) for k in FORWARD_KINDS]
            publish.append(subscription(TopicKind.GATEWAY_STATUS, site=site))
            return Permissions(
                tuple(publish), (ack_subscription("gw", site=site), ack_subscription("dev", site=site))
            )
    raise InvalidAccount(getattr(account, "username", "?"), f"unknown account type {type(account).__name__}")


# --- validation --------------------------------------------------------------------------------------


def _check_id(username: str, what: str, value: str) -> None:
    if not valid_id(value):
        raise InvalidAccount(username, f"{what} {value!r} must match {ID_PATTERN}")


def check_account(account: Account) -> None:
    """One account on its own: ids, sites and the hash format."""
    name = account.username
    _check_id(name, "username", name)
    try:
        parse_hash(account.password_hash)
    except PasswordHashError as exc:
        raise InvalidAccount(name, exc.detail) from None
    match account:
        case DeviceAccount(site=site) | SimulatorAccount(site=site):
            _check_id(name, "site", site)
        case GatewayAccount(site=site, devices=devices):
            _check_id(name, "site", site)
            for device in devices:
                _check_id(name, "attached device", device)
        case IngesterAccount(sites=sites) | LiveViewAccount(sites=sites):
            if sites is not None:
                if not sites:
                    raise InvalidAccount(name, "an empty set of sites reads nothing; use None for all sites")
                for site in sites:
                    _check_id(name, "site", site)


class Accounts:
    """An immutable, validated set of accounts keyed by username. Every change returns a new set."""

    __slots__ = ("_by_name", "_granted")

    def __init__(self, accounts: Iterable[Account] = ()) -> None:
        by_name: dict[str, Account] = {}
        for account in accounts:
            check_account(account)
            taken = by_name.get(account.username)
            if taken is not None:
                raise AccountExists(account.username, role_of(taken).value)
            by_name[account.username] = account
        self._by_name = dict(sorted(by_name.items()))
        self._granted: dict[str, Permissions] = {}  # the embedded broker asks on every message
        self.device_sites()  # the identity rule

    def __iter__(self) -> Iterator[Account]:
        return iter(self._by_name.values())

    def __len__(self) -> int:
        return len(self._by_name)

    def __contains__(self, username: object) -> bool:
        return username in self._by_name

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Accounts) and self._by_name == other._by_name

    def __hash__(self) -> int:
        return hash(tuple(self._by_name.values()))

    def __repr__(self) -> str:
        return f"Accounts({', '.join(f'{n}:{role_of(a).value}' for n, a in self._by_name.items())})"

    def get(self, username: str) -> Account | None:
        return self._by_name.get(username)

    def require(self, username: str, cls: type[Account] | None = None) -> Account:
        account = self._by_name.get(username)
        if account is None or (cls is not None and not isinstance(account, cls)):
            raise UnknownAccount(username, None if cls is None else _ROLES[cls].value)
        return account

    def device_sites(self) -> Mapping[str, str]:
        """``{device id: site}`` of every device the accounts know (own account or attached to a gateway);
        raises :class:`InvalidAccount` when one device id would belong to two sites."""
        sites: dict[str, str] = {}
        for account in self._by_name.values():
            if isinstance(account, DeviceAccount):
                pairs: Iterable[tuple[str, str]] = [(account.username, account.site)]
            elif isinstance(account, GatewayAccount):
                pairs = [(d, account.site) for d in account.devices]
            else:
                continue
            for device, site in pairs:
                known = sites.setdefault(device, site)
                if known != site:
                    raise InvalidAccount(
                        account.username, f"device {device!r} belongs to site {known!r}, not {site!r}"
                    )
        return sites

    def with_account(self, account: Account) -> Accounts:
        """Add a new account (:class:`AccountExists` if the username is taken)."""
        taken = self._by_name.get(account.username)
        if taken is not None:
            raise AccountExists(account.username, role_of(taken).value)
        return Accounts([*self._by_name.values(), account])

    def replacing(self, account: Account) -> Accounts:
        """The same username with new content (its role must stay the same)."""
        old = self.require(account.username)
        if role_of(old) is not role_of(account):
            raise InvalidAccount(
                account.username, f"a {role_of(old).value} cannot become a {role_of(account)}"
            )
        return Accounts(account if a.username == account.username else a for a in self._by_name.values())

    def without(self, username: str) -> Accounts:
        self.require(username)
        return Accounts(a for a in self._by_name.values() if a.username != username)

    def permissions(self, username: str) -> Permissions | None:
        granted = self._granted.get(username)
        if granted is None:
            account = self._by_name.get(username)
            if account is None:
                return None
            granted = self._granted[username] = permissions(account)
        return granted
