"""Payload schema v1: typed, frozen records decoded strictly with msgspec.

Units are in the field names. Bounds are the physically or physiologically possible range of each
quantity; a value outside them is rejected (``implausible_value``), not clamped. Non-finite numbers
cannot pass: JSON has no NaN/Infinity literal and an overflowing number (``1e999``) fails every bound.

Example (one message may carry many samples; batching is what makes 1 Hz fleets cheap)::

    {"v": 1, "device": "bike-07", "seq": 1234,
     "samples": [{"t": "2026-11-25T10:00:00.000Z", "power_w": 182, "cadence_rpm": 88.5,
                  "hr_bpm": 141, "rr_ms": [421, 425]}]}
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Final, Literal

import msgspec
from msgspec import Meta, Struct

from vitalab.wire.topics import ID_PATTERN

SCHEMA_VERSION: Final = 1
MAX_SAMPLES_PER_MESSAGE: Final = 3600
MAX_RR_PER_SAMPLE: Final = 64

NO_NUL: Final = r"^[^\x00]*$"
"""Free text may hold any character but NUL, which no PostgreSQL text column can store (a decoder error
names the field: :class:`vitalab.wire.errors.NulCharacter`)."""

DeviceId = Annotated[str, Meta(pattern=ID_PATTERN, description="device id, unique per deployment")]
Text64 = Annotated[str, Meta(max_length=64, pattern=NO_NUL, description="free text, no NUL")]
UtcTime = Annotated[datetime, Meta(tz=True, description="device time, RFC 3339 with offset (UTC)")]


def _bounded(lo: float, hi: float, unit: str) -> object:
    return Meta(ge=lo, le=hi, description=f"{unit}, {lo:g} to {hi:g}")


SpeedKmh = Annotated[float, _bounded(0, 100, "km/h")]
InclinePct = Annotated[float, _bounded(-50, 50, "% grade")]
DistanceM = Annotated[float, _bounded(0, 16_777_215, "m since the start of the workout")]
EnergyKcal = Annotated[float, _bounded(0, 65_535, "kcal since the start of the workout")]
PowerW = Annotated[float, _bounded(0, 4_000, "W")]
CadenceRpm = Annotated[float, _bounded(0, 250, "rpm")]
StrokeRateSpm = Annotated[float, _bounded(0, 80, "strokes/min")]
PaceSPer500m = Annotated[float, _bounded(30, 3_600, "s per 500 m")]
HrBpm = Annotated[float, _bounded(20, 250, "beats/min")]
RrMs = Annotated[float, _bounded(200, 3_000, "ms between beats")]
ElapsedS = Annotated[float, _bounded(0, 604_800, "s since the start of the workout")]
ResistanceLevel = Annotated[float, _bounded(-1_000, 10_000, "machine units")]
Met = Annotated[float, _bounded(0, 30, "metabolic equivalents")]
BatteryPct = Annotated[float, _bounded(0, 100, "% of the battery's charge left")]


class Sample(Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """One instant of one device. Every metric is optional; ``t`` is the row identity with the device."""

    t: UtcTime
    speed_kmh: SpeedKmh | None = None
    incline_pct: InclinePct | None = None
    distance_m: DistanceM | None = None
    energy_kcal: EnergyKcal | None = None
    power_w: PowerW | None = None
    cadence_rpm: CadenceRpm | None = None
    stroke_rate_spm: StrokeRateSpm | None = None
    pace_s_per_500m: PaceSPer500m | None = None
    hr_bpm: HrBpm | None = None
    rr_ms: Annotated[list[RrMs], Meta(max_length=MAX_RR_PER_SAMPLE)] | None = None
    elapsed_s: ElapsedS | None = None
    resistance_level: ResistanceLevel | None = None
    met: Met | None = None


METRIC_FIELDS: Final[tuple[str, ...]] = tuple(f for f in Sample.__struct_fields__ if f not in ("t", "rr_ms"))


GatewayId = Annotated[
    str,
    Meta(
        pattern=ID_PATTERN,
        description="the gateway that sent the message: ingesters acknowledge it on that gateway's ack "
        "topic (vitalab.wire.acks); absent: on the device's own",
    ),
]


class TelemetryMessage(Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """``vitalab/v1/{site}/dev/{device}/telemetry``, QoS 1, not retained. ``(device, seq)`` identifies the
    message in the commit acknowledgements (:mod:`vitalab.wire.acks`)."""

    v: Literal[1]
    device: DeviceId
    seq: Annotated[int, Meta(ge=0, le=2**63 - 1, description="per-device message counter")]
    samples: Annotated[list[Sample], Meta(min_length=1, max_length=MAX_SAMPLES_PER_MESSAGE)]
    gw: GatewayId | None = None
    ack: Annotated[
        bool,
        Meta(
            description="a device sending for itself asks for commit acknowledgements on its own ack topic "
            "(vitalab.wire.acks); with gw, they go to the gateway's"
        ),
    ] = False


class Envelope(Struct, frozen=True, forbid_unknown_fields=True):
    """A telemetry message whose samples are left undecoded, to judge each one on its own."""

    v: Literal[1]
    device: DeviceId
    seq: Annotated[int, Meta(ge=0, le=2**63 - 1)]
    samples: Annotated[list[msgspec.Raw], Meta(min_length=1, max_length=MAX_SAMPLES_PER_MESSAGE)]
    gw: Annotated[str, Meta(pattern=ID_PATTERN)] | None = None
    ack: bool = False


class Version(Struct, frozen=True):
    v: object = None


DeviceKind = Literal["treadmill", "bike", "rower", "cross_trainer", "hr_strap", "power_meter"]
Transport = Literal["mqtt", "ble", "ant", "sim"]


class DeviceMeta(Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """``.../dev/{device}/meta``, retained: what the device is."""

    v: Literal[1]
    device: DeviceId
    kind: DeviceKind
    vendor: Text64 | None = None
    model: Text64 | None = None
    firmware: Text64 | None = None
    transport: Transport = "mqtt"
    features: Annotated[list[Text64], Meta(max_length=64)] = []


TrainingStatus = Literal[
    "idle",
    "warm_up",
    "low_interval",
    "high_interval",
    "recovery",
    "cool_down",
    "manual",
    "pre_workout",
    "post_workout",
    "other",
]


class DeviceState(Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """``.../dev/{device}/state``, retained: online, training status, error codes, and the battery's charge
    where the device reports it (BLE Battery Service, ANT+ common page 82)."""

    v: Literal[1]
    device: DeviceId
    t: UtcTime
    online: bool
    training: TrainingStatus | None = None
    errors: Annotated[list[Text64], Meta(max_length=32)] = []
    battery_pct: BatteryPct | None = None


class GatewayStatus(Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """``.../gw/{gateway}/status``, retained: birth ``online: true``; the LWT says ``online: false``."""

    v: Literal[1]
    gateway: DeviceId
    online: bool
    t: UtcTime | None = None
    devices: Annotated[list[DeviceId], Meta(max_length=1024)] = []


class RawFrame(Struct, frozen=True, forbid_unknown_fields=True):
    """``.../dev/{device}/raw``, QoS 0: an undecoded BLE/ANT+ frame for decoding upstream."""

    t: UtcTime
    src: Literal["ble", "ant"]
    char: Annotated[str, Meta(pattern=r"^[0-9a-f]{4}$", description="characteristic / page, hex")]
    hex: Annotated[str, Meta(pattern=r"^([0-9a-f]{2}){1,64}$")]
