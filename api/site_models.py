"""Models of the site administration and the device and gateway registration routes
(:mod:`api.routes.sites_admin`, :mod:`api.routes.registration`)."""

from __future__ import annotations

import functools
from datetime import datetime
from typing import Annotated, Literal
from zoneinfo import available_timezones

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from analytics.opening_hours import OpeningHours, OpeningHoursError, Weekday, check
from api.models import TEXT
from vitalab.wire.registry import DeviceKind
from vitalab.wire.topics import ID_PATTERN

Id = Annotated[str, Field(pattern=ID_PATTERN, examples=["gym-a"])]
Words = Annotated[str, Field(min_length=1, max_length=200, pattern=TEXT)]


NOT_A_PLACE = frozenset({"localtime", "posixrules", "Factory"})
"""Entries of the time zone database that name no place: the machine's own zone, a template, "no zone"."""


@functools.cache
def _timezones() -> frozenset[str]:
    return frozenset(available_timezones()) - NOT_A_PLACE


def _known_timezone(name: str) -> str:
    if name not in _timezones():
        raise ValueError(f"unknown timezone {name!r} (an IANA name such as Europe/Brussels)")
    return name


def _checked_hours(raw: dict[Weekday, list[list[str]]]) -> OpeningHours:
    try:
        return check(raw)
    except OpeningHoursError as exc:
        raise ValueError(str(exc)) from None


Timezone = Annotated[str, Field(max_length=64, examples=["Europe/Brussels"]), AfterValidator(_known_timezone)]
Interval = Annotated[
    list[Annotated[str, Field(max_length=5, examples=["06:00"])]],
    Field(min_length=2, max_length=2, description="[opens, closes), local `HH:MM`"),
]
"""An opening interval (a list, not a tuple: OpenAPI 3.1 schemas of tuples trip some tools)."""
Hours = Annotated[
    dict[Weekday, list[Interval]],
    Field(
        description="per weekday (`mon` .. `sun`), the local intervals [opens, closes) as `HH:MM` (`24:00` "
        "ends a day), in order and not overlapping; a weekday not named is closed",
        examples=[{"mon": [["06:00", "22:00"]], "sat": [["08:00", "20:00"]]}],
    ),
    AfterValidator(_checked_hours),
]


# --- sites -------------------------------------------------------------------------------------------------


class SiteIn(BaseModel):
    """A new site: its id (the topic tree's ``{site}`` segment), name, IANA timezone (local days and opening
    hours) and opening hours (null: not set, treated as always open)."""

    model_config = ConfigDict(extra="forbid")

    id: Id
    name: Words | None = None
    timezone: Timezone
    opening_hours: Hours | None = None


class SitePatch(BaseModel):
    """The fields to change; a field left out keeps its value (``name`` and ``opening_hours`` may be set to
    null)."""

    model_config = ConfigDict(extra="forbid")

    name: Words | None = None
    timezone: Timezone | None = None
    opening_hours: Hours | None = None


class SiteOut(BaseModel):
    site_id: str
    name: str | None
    timezone: str
    opening_hours: dict[Weekday, list[Interval]] | None
    created_at: datetime
    """When the site was created (by an admin, or, in a deployment under the ingester's ``register``
    policy, when its first device was heard of)."""


# --- devices and gateways ----------------------------------------------------------------------------------

BrokerOutcome = Literal["issued", "via_gateway", "updated", "revoked", "external"]
"""What happened on the broker: ``issued`` a login (in ``mqtt``, shown this once); the device speaks
``via_gateway`` (no login of its own); the gateway's login ``updated`` to publish for its devices; a login
``revoked``; broker logins of this deployment are managed ``external``-ly (the API has no broker account
store: ``VITALAB_BROKER_STATE_DIR`` is unset)."""


class DeviceRegistrationIn(BaseModel):
    """A device of the site. Its id is unique in the deployment and stays bound to this site; it becomes the
    device's MQTT username. With ``gateway_id`` the device speaks through that gateway of the site (which may
    then publish for it) and gets no login of its own."""

    model_config = ConfigDict(extra="forbid")

    id: Id
    """The new device's id (a body's ``device_id`` names an existing device)."""
    kind: DeviceKind
    vendor: Words | None = None
    model: Words | None = None
    gateway_id: Id | None = None


class RegisteredDevice(BaseModel):
    device_id: str
    site_id: str
    kind: DeviceKind | None
    vendor: str | None
    model: str | None
    gateway_id: str | None
    registered_at: datetime | None
    """None: heard of (under the ingester's ``register`` policy), never registered."""
    retired_at: datetime | None


class MqttLogin(BaseModel):
    """A broker login, shown once: the broker keeps only a hash of the password."""

    username: str
    password: str
    publishes: list[str]
    """The topics this login may publish to (MQTT topic filters)."""


class DeviceRegistrationOut(BaseModel):
    device: RegisteredDevice
    broker: BrokerOutcome
    mqtt: MqttLogin | None = None


class GatewayRegistrationIn(BaseModel):
    """A gateway of the site and the registered devices of the site it publishes for."""

    model_config = ConfigDict(extra="forbid")

    id: Id
    """The new gateway's id."""
    devices: list[Id] = Field(default_factory=list, max_length=10_000)


class AttachIn(BaseModel):
    """Registered devices of the gateway's site that the gateway publishes for from now on."""

    model_config = ConfigDict(extra="forbid")

    devices: list[Id] = Field(min_length=1, max_length=10_000)


class RegisteredGateway(BaseModel):
    gateway_id: str
    site_id: str
    devices: list[str]
    """The registered, not retired devices attached to it."""
    registered_at: datetime | None
    retired_at: datetime | None


class GatewayRegistrationOut(BaseModel):
    gateway: RegisteredGateway
    broker: BrokerOutcome
    mqtt: MqttLogin | None = None
