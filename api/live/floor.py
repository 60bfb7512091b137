"""The live floor of one site, folded from the broker's messages (pure: no I/O, the time is passed in).

A :class:`Floor` holds one record per device of the site and turns each message (retained ``meta``,
``state`` and gateway ``status``, live ``telemetry``) into the :class:`Tile` s that changed. What a tile says:

``in_use``
    A machine whose training status is active (anything but ``idle``, ``pre_workout``, ``post_workout``:
    :data:`analytics.sessions.INACTIVE_STATUSES`). A strap (whose "online" means reachable, not worn) and a
    device that has never reported a training status are in use while their telemetry keeps coming (within
    ``silent_after_s``). A state without a training status leaves the last one in force (as the analytics
    read it).
``status``
    ``offline`` when the device's state or last will says so, when its gateway's status (or the gateway's
    last will) says the gateway is offline, or when nothing was ever heard of it; ``silent`` when a device
    that is expected to send (in use by its state) has sent nothing for ``silent_after_s`` while the site is
    open (a free device only after ``idle_silent_after_s``, if set: most equipment speaks only while used):
    counted from its last message or from the start of the site's current opening, whichever is later, as
    the fleet alerts count it (the site's ``opening_hours`` in its timezone,
    :class:`analytics.opening_hours.SiteHours`; not set: always open); ``online`` otherwise. Any message from
    the device ends its silence, and so does the site's closing (nobody expects it to send then).
``since``
    When the current use and status began: the state's own time (device clock) where the device reported
    the change, otherwise when the hub saw it (``now`` of :meth:`Floor.on_message` / :meth:`Floor.tick`).
values
    ``power_w``, ``speed_kmh``, ``cadence_rpm``, ``stroke_rate_spm`` of the newest sample, and ``hr_zone``:
    the 5-zone model by %HRmax (Z1 [50, 60) ... Z5 [90, ∞), lower-inclusive; 0 below 50 %, the same edges
    as :mod:`analytics.hr`) with the HRmax of the participant checked in on the device (measured, else the
    HUNT estimate from age), or :data:`DEFAULT_HR_MAX_BPM` when nobody is checked in. No identity and no heart
    rate leave the floor, only the zone. Every value is null while the device is free.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Final, Literal

import msgspec
import numpy as np

from analytics.hr import EDGE_TOLERANCE_BPM, ZONE5_EDGES_PCT_HRMAX, hrmax_estimate
from analytics.opening_hours import SiteHours
from analytics.sessions import INACTIVE_STATUSES
from vitalab.wire import (
    TopicKind,
    WireError,
    WireLimits,
    decode_gateway_status,
    decode_meta,
    decode_state,
    decode_telemetry,
    parse_topic,
)

log = logging.getLogger(__name__)

Status = Literal["online", "offline", "silent"]
DEFAULT_AGE_Y: Final = 40
"""Whose HRmax a device's zone uses when nobody (or somebody of unknown age and HRmax) is checked in."""
DEFAULT_HR_MAX_BPM: Final = float(hrmax_estimate(np.array([DEFAULT_AGE_Y], dtype=np.float64))[0])
"""HUNT (211 − 0.64·age) at :data:`DEFAULT_AGE_Y`: 185.4 bpm."""
STRAP: Final = "hr_strap"


class Tile(msgspec.Struct, frozen=True):
    """One device on the live floor (the dashboard's tile; the ``device`` event of the live stream)."""

    device_id: str
    kind: str | None
    in_use: bool
    status: Status
    since: datetime | None
    training: str | None = None
    errors: tuple[str, ...] = ()
    power_w: float | None = None
    speed_kmh: float | None = None
    cadence_rpm: float | None = None
    stroke_rate_spm: float | None = None
    hr_zone: int | None = None
    """0 (below 50 % HRmax) to 5; null when there is no heart rate or the device is free."""


@dataclass(frozen=True, slots=True)
class FloorConfig:
    silent_after_s: float = 60.0
    idle_silent_after_s: float | None = None
    limits: WireLimits = field(default_factory=WireLimits)


@dataclass(frozen=True, slots=True)
class KnownDevice:
    """A device as the database knows it (the snapshot before the broker's retained messages arrive)."""

    device_id: str
    kind: str | None
    online: bool | None
    training: str | None
    errors: list[str]
    state_at: datetime | None
    last_seen: datetime | None
    power_w: float | None = None
    speed_kmh: float | None = None
    cadence_rpm: float | None = None
    stroke_rate_spm: float | None = None
    hr_bpm: float | None = None
    sample_t: datetime | None = None


@dataclass(slots=True)
class _Device:
    device_id: str
    kind: str | None = None
    said_online: bool | None = None
    training: str | None = None
    errors: tuple[str, ...] = ()
    gateway: str | None = None
    state_t: datetime | None = None
    """Device time of the state applied (an older one, e.g. a stale retained state, changes nothing)."""
    last_heard: datetime | None = None
    """When the hub last heard of the device (its clock; the database's device time before that)."""
    sample_t: datetime | None = None
    power_w: float | None = None
    speed_kmh: float | None = None
    cadence_rpm: float | None = None
    stroke_rate_spm: float | None = None
    hr_bpm: float | None = None
    silent: bool = False
    silent_since: datetime | None = None
    """The later of its last message and the start of the opening it went silent in."""
    streaming: bool = False
    """Telemetry came within ``silent_after_s`` (what "in use" means for a device without a status)."""
    tile: Tile | None = None


def zone(hr_bpm: float | None, hr_max_bpm: float) -> int | None:
    """The 5-zone model by %HRmax: 1..5 for [50, 60) .. [90, ∞), 0 below 50 %; None without a heart rate."""
    if hr_bpm is None or not hr_max_bpm > 0:
        return None
    return sum(1 for e in ZONE5_EDGES_PCT_HRMAX if hr_bpm >= e / 100.0 * hr_max_bpm - EDGE_TOLERANCE_BPM)


def hr_max_of(hr_max_bpm: float | None, birth_year: int | None, today_year: int) -> float:
    """A participant's HRmax: measured, else HUNT from age, else :data:`DEFAULT_HR_MAX_BPM`."""
    if hr_max_bpm is not None:
        return float(hr_max_bpm)
    if birth_year is not None:
        return float(hrmax_estimate(np.array([today_year - birth_year], dtype=np.float64))[0])
    return DEFAULT_HR_MAX_BPM


class Floor:
    """The devices of one site and what they are doing now."""

    def __init__(self, site_id: str, config: FloorConfig, hours: SiteHours | None = None) -> None:
        self.site_id = site_id
        self.config = config
        self.hours = SiteHours() if hours is None else hours
        """The site's opening hours and timezone (:meth:`set_hours`)."""
        self._devices: dict[str, _Device] = {}
        self._gateways: dict[str, bool] = {}
        self._hr_max: dict[str, float] = {}
        self._started: set[str] = set()

    # --- what the floor shows ----------------------------------------------------------------------
    def tiles(self) -> list[Tile]:
        return [d.tile for _, d in sorted(self._devices.items()) if d.tile is not None]

    def tile(self, device_id: str) -> Tile | None:
        d = self._devices.get(device_id)
        return None if d is None else d.tile

    def take_started(self) -> set[str]:
        """Devices that went into use since the last call (whose user's profile is worth a fresh look)."""
        started, self._started = self._started, set()
        return started

    # --- inputs ------------------------------------------------------------------------------------
    def load(self, known: Iterable[KnownDevice]) -> list[Tile]:
        """The database's view of the site's devices (before or beside the broker's)."""
        for k in known:
            d = self._device(k.device_id)
            d.kind = k.kind or d.kind
            if d.said_online is None:
                d.said_online = k.online
                d.training = k.training
                d.errors = tuple(k.errors)
                d.state_t = k.state_at
            heard = max((t for t in (k.state_at, k.last_seen) if t is not None), default=None)
            if d.last_heard is None:
                d.last_heard = heard
            if k.sample_t is not None and (d.sample_t is None or k.sample_t > d.sample_t):
                d.sample_t = k.sample_t
                d.power_w, d.speed_kmh = k.power_w, k.speed_kmh
                d.cadence_rpm, d.stroke_rate_spm, d.hr_bpm = k.cadence_rpm, k.stroke_rate_spm, k.hr_bpm
        return self._refresh(self._devices.values(), k_since=None)

    def set_profiles(self, hr_max_bpm: Mapping[str, float]) -> list[Tile]:
        """The HRmax of whoever is checked in on each device (devices not named: nobody)."""
        self._hr_max = dict(hr_max_bpm)
        return self._refresh(self._devices.values(), k_since=None)

    def set_hours(self, hours: SiteHours, now: datetime) -> list[Tile]:
        """The site's opening hours (or timezone) as they are now; the silences that changed with them."""
        self.hours = hours
        return self.tick(now)

    def on_message(self, topic: str, payload: bytes, now: datetime, *, retained: bool = False) -> list[Tile]:
        """One message from the broker, in the broker's order; a message outside the contract changes nothing
        (logged). A ``retained`` state (the broker's copy, delivered when the hub subscribes) older than the
        state the hub already has (from the database) is stale and changes nothing either."""
        try:
            parsed = parse_topic(topic)
            if parsed.site != self.site_id:
                return []
            if parsed.kind is TopicKind.GATEWAY_STATUS:
                return self._on_gateway(parsed.source, payload, now)
            d = self._device(parsed.source)
            if parsed.kind is TopicKind.META:
                d.kind = decode_meta(payload, self.config.limits).kind
                return self._refresh([d], k_since=now)
            if parsed.kind is TopicKind.STATE:
                state = decode_state(payload, self.config.limits)
                if retained and d.state_t is not None and state.t < d.state_t:
                    return []
                d.said_online, d.errors = state.online, tuple(state.errors)
                if state.training is not None:  # a state without a training status changes none
                    d.training = state.training
                d.state_t = state.t
                d.last_heard = now
                d.silent = False
                return self._refresh([d], k_since=min(state.t, now))
            if parsed.kind is TopicKind.TELEMETRY:
                return self._on_telemetry(d, payload, now)
        except WireError as exc:
            log.info("live view of %s: %s ignored: %s", self.site_id, topic, exc)
        return []

    def tick(self, now: datetime) -> list[Tile]:
        """Silence: devices expected to send that have not for too long while the site is open (counted from
        the later of their last message and the opening); a closed site has no silent devices."""
        opened = self.hours.open_since(now)
        went: list[_Device] = []
        for d in self._devices.values():
            if opened is None:
                if d.silent:  # closed: nobody expects it to send
                    d.silent = False
                    went.append(d)
                continue
            limit = self._silent_after(d)
            if not d.silent and limit is not None and d.last_heard is not None:
                quiet_from = max(d.last_heard, opened)
                if now - quiet_from > timedelta(seconds=limit):
                    d.silent = True
                    d.silent_since = quiet_from
                    went.append(d)
        # a device without a training status counts as in use only while its telemetry keeps coming
        for d in self._devices.values():
            if (
                d.streaming
                and d.last_heard is not None
                and now - d.last_heard > timedelta(seconds=self.config.silent_after_s)
            ):
                d.streaming = False
                went.append(d)
        return self._refresh(went, k_since=now)

    # --- internals -----------------------------------------------------------------------------------
    def _device(self, device_id: str) -> _Device:
        d = self._devices.get(device_id)
        if d is None:
            d = self._devices[device_id] = _Device(device_id)
        return d

    def _on_gateway(self, gateway: str, payload: bytes, now: datetime) -> list[Tile]:
        status = decode_gateway_status(payload, self.config.limits)
        self._gateways[gateway] = status.online
        for device_id in status.devices:
            self._device(device_id).gateway = gateway
        since = now if status.t is None else min(status.t, now)
        return self._refresh([d for d in self._devices.values() if d.gateway == gateway], k_since=since)

    def _on_telemetry(self, d: _Device, payload: bytes, now: datetime) -> list[Tile]:
        decoded = decode_telemetry(payload, topic_device=d.device_id, now=now, limits=self.config.limits)
        d.last_heard = now
        d.silent = False
        d.streaming = True
        if decoded.samples:
            newest = max(decoded.samples, key=lambda s: s.t)
            if d.sample_t is None or newest.t >= d.sample_t:
                d.sample_t = newest.t
                d.power_w, d.speed_kmh = newest.power_w, newest.speed_kmh
                d.cadence_rpm, d.stroke_rate_spm = newest.cadence_rpm, newest.stroke_rate_spm
                d.hr_bpm = newest.hr_bpm
        return self._refresh([d], k_since=now)

    def _used_by_state(self, d: _Device) -> bool | None:
        """In use by what the device said (None: nothing it says tells: a strap says it is online whether
        worn or not, so it is in use while its heart rates come)."""
        if d.kind == STRAP or d.training is None:
            return None
        return d.training not in INACTIVE_STATUSES

    def _silent_after(self, d: _Device) -> float | None:
        if self._used_by_state(d):
            return self.config.silent_after_s
        return self.config.idle_silent_after_s

    def _status(self, d: _Device) -> Status:
        gateway_down = d.gateway is not None and self._gateways.get(d.gateway) is False
        if d.said_online is False or gateway_down:
            return "offline"
        if d.silent:
            return "silent"
        if d.said_online is None and d.last_heard is None:
            return "offline"
        return "online"

    def _in_use(self, d: _Device, status: Status) -> bool:
        if status == "offline":
            return False
        by_state = self._used_by_state(d)
        # never said: in use while telemetry comes (ended by tick())
        return d.streaming if by_state is None else by_state

    def _refresh(self, devices: Iterable[_Device], *, k_since: datetime | None) -> list[Tile]:
        """Recompute the tiles of ``devices``; the ones that changed. ``k_since``: when a change of use or
        status happened (None: unknown, the device's last-heard time)."""
        changed: list[Tile] = []
        seen: set[str] = set()
        for d in devices:
            if d.device_id in seen:
                continue
            seen.add(d.device_id)
            status = self._status(d)
            in_use = self._in_use(d, status)
            old = d.tile
            if old is None or old.status != status or old.in_use != in_use:
                since = k_since if k_since is not None else d.last_heard
                if status == "silent":
                    since = d.silent_since
                if in_use and (old is None or not old.in_use):
                    self._started.add(d.device_id)
                if not in_use and old is not None and old.in_use:  # the next use starts afresh
                    d.power_w = d.speed_kmh = d.cadence_rpm = d.stroke_rate_spm = d.hr_bpm = None
            else:
                since = old.since
            hr_max = self._hr_max.get(d.device_id, DEFAULT_HR_MAX_BPM)
            active = in_use and status != "offline"
            tile = Tile(
                device_id=d.device_id,
                kind=d.kind,
                in_use=in_use,
                status=status,
                since=since,
                training=d.training,
                errors=d.errors,
                power_w=d.power_w if active else None,
                speed_kmh=d.speed_kmh if active else None,
                cadence_rpm=d.cadence_rpm if active else None,
                stroke_rate_spm=d.stroke_rate_spm if active else None,
                hr_zone=zone(d.hr_bpm, hr_max) if active else None,
            )
            if tile != old:
                d.tile = tile
                changed.append(tile)
        return changed
