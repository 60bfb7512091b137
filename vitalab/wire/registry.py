"""The one registry of device kinds and their sample fields.

Everything else that names a kind or a field is derived from here or checked against it by one test
(``tests/vitalab/test_registry.py``): the wire types' bounds (``vitalab.wire.payload``), the samples table's
columns and the devices table's kind check (migrations), the analytics kind codes, the gateway's BLE and
ANT+ maps, the simulator's fleet mix and the API's models.

Adding a kind (say a stair climber): append a :class:`Kind` below (append only: the position is the
analytics kind code), add its name to ``DeviceKind`` in ``vitalab.wire.payload`` and to the devices
table's check (a migration), then write its decoder and its simulated device. A new sample field: append a
:class:`Field`, add it to ``Sample`` and a migration adding the column; the test names what is missing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

DeviceKind = Literal["treadmill", "bike", "rower", "cross_trainer", "hr_strap", "power_meter"]
"""Every kind's name, written out for the type checker; the test checks it against :data:`KINDS`."""
FieldType = Literal["float", "float_list"]


@dataclass(frozen=True, slots=True)
class Field:
    """One quantity a sample may carry. ``name`` carries the unit (``power_w``); the range is what is
    physically or physiologically possible: a value outside it is refused, not clamped."""

    name: str
    unit: str
    lo: float
    hi: float
    description: str
    kinds: frozenset[DeviceKind]
    type: FieldType = "float"

    @property
    def bound_text(self) -> str:
        return f"{self.description}, {self.lo:g} to {self.hi:g}"


@dataclass(frozen=True, slots=True)
class Kind:
    """A kind of device. ``ble`` lists the GATT characteristics (16-bit, hex) a gateway subscribes to, the
    data characteristic first; ``ant_fe`` is the ANT+ FE-C equipment type; ``ant_profile`` the ANT+ device
    type of a kind that has its own profile."""

    name: DeviceKind
    title: str
    machine: bool
    ble: tuple[str, ...] = ()
    ant_fe: int | None = None
    ant_profile: int | None = None

    @property
    def ble_data(self) -> tuple[str, ...]:
        """The characteristics whose notifications carry this kind's telemetry."""
        return tuple(c for c in self.ble if c not in _FTMS_STATUS)


_FTMS_STATUS: Final = ("2ada", "2ad3")  # Fitness Machine Status, Training Status

KINDS: Final[tuple[Kind, ...]] = (
    Kind("treadmill", "Treadmill", True, ble=("2acd", *_FTMS_STATUS), ant_fe=19),
    Kind("bike", "Indoor bike", True, ble=("2ad2", *_FTMS_STATUS), ant_fe=25),
    Kind("rower", "Rower", True, ble=("2ad1", *_FTMS_STATUS), ant_fe=22),
    Kind("cross_trainer", "Cross trainer", True, ble=("2ace", *_FTMS_STATUS), ant_fe=20),
    Kind("hr_strap", "Heart-rate strap", False, ble=("2a37",), ant_profile=120),
    Kind("power_meter", "Power meter", False, ble=("2a63", "2a5b")),
)
"""Append only: a kind's position is its analytics code."""

KIND_NAMES: Final[tuple[DeviceKind, ...]] = tuple(k.name for k in KINDS)
MACHINE_KINDS: Final[tuple[DeviceKind, ...]] = tuple(k.name for k in KINDS if k.machine)
KIND: Final[dict[str, Kind]] = {k.name: k for k in KINDS}

_MACHINES: Final[frozenset[DeviceKind]] = frozenset(MACHINE_KINDS)
_ALL: Final[frozenset[DeviceKind]] = frozenset(KIND_NAMES)

FIELDS: Final[tuple[Field, ...]] = (
    Field("speed_kmh", "km/h", 0, 100, "km/h", frozenset({"treadmill", "bike", "cross_trainer"})),
    Field("incline_pct", "%", -50, 50, "% grade", frozenset({"treadmill", "cross_trainer"})),
    Field("distance_m", "m", 0, 16_777_215, "m since the start of the workout", _MACHINES),
    Field("energy_kcal", "kcal", 0, 65_535, "kcal since the start of the workout", _MACHINES),
    Field("power_w", "W", 0, 4_000, "W", _MACHINES | {"power_meter"}),
    Field("cadence_rpm", "rpm", 0, 250, "rpm", frozenset({"bike", "cross_trainer", "power_meter"})),
    Field("stroke_rate_spm", "1/min", 0, 80, "strokes/min", frozenset({"rower"})),
    Field("pace_s_per_500m", "s/500 m", 30, 3_600, "s per 500 m", frozenset({"rower"})),
    Field("hr_bpm", "1/min", 20, 250, "beats/min", _ALL - {"power_meter"}),
    Field("rr_ms", "ms", 200, 3_000, "ms between beats", frozenset({"hr_strap"}), type="float_list"),
    Field("elapsed_s", "s", 0, 604_800, "s since the start of the workout", _MACHINES),
    Field("resistance_level", "1", -1_000, 10_000, "machine units", _MACHINES - {"treadmill"}),
    Field("met", "1", 0, 30, "metabolic equivalents", _MACHINES),
)
"""The order is the samples table's column order and ``Sample``'s field order."""

FIELD: Final[dict[str, Field]] = {f.name: f for f in FIELDS}
METRIC_FIELD_NAMES: Final[tuple[str, ...]] = tuple(f.name for f in FIELDS if f.type == "float")
"""The samples table's metric columns (``rr_ms`` goes to ``rr_intervals``)."""


def fields_of(kind: str) -> tuple[Field, ...]:
    """The fields a device of ``kind`` may send."""
    return tuple(f for f in FIELDS if kind in f.kinds)


def kind_of_ble(char: str) -> DeviceKind | None:
    """The kind whose telemetry arrives on the BLE characteristic ``char`` (hex), if any."""
    for k in KINDS:
        if char in k.ble_data:
            return k.name
    return None


def kind_of_ant_fe(equipment: int) -> DeviceKind | None:
    """The kind an ANT+ FE-C equipment type names, if any."""
    for k in KINDS:
        if k.ant_fe == equipment:
            return k.name
    return None
