"""Per-model deviations from the BLE FTMS tables, and how a device's deviations are chosen.

**Choosing.** A device's quirks follow from what the device says it is: the Device Information Service
(0x180A: manufacturer name, model number, firmware revision; see :mod:`gateway.dis`) that a gateway reads
on every connect. :func:`select` matches that :class:`DeviceIdentity` against :data:`RULES` (manufacturer,
optionally a model-number prefix and a firmware range). An operator can name a profile instead
(:data:`PROFILES`: the device list's ``quirks = "..."``, ``vitalab decode --model ...``), and that wins over
the rules; the profile ``"specification"`` switches quirks off for a device a rule would match. No rule
and no profile: the specification's reading.

**What a quirk does.** Each :class:`Quirk` says where it was seen; "reported in ftms.md, not verified"
marks the ones only our reference notes mention. Flag bits reserved for future use are not a quirk: every
decoder ignores them and keeps what they add (:func:`gateway.ftms.decode_data`).

**The rules' strings.** Manufacturer and model are compared after :func:`name_key` (case, spaces, ``-``,
``_`` and NULs do not count: "Life Fitness", "LifeFitness" and "LIFE-FITNESS" are one name). Where the
cited project matched a device by its advertised name rather than by the DIS, the rule says so in ``seen``:
the DIS string itself has not been seen in a capture then. Firmware revisions are compared as the tuple
of the numbers in them ("v2.10-b3" -> (2, 10, 3)); a rule with a firmware range does not match a device
whose firmware revision is unknown.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction
from typing import Final

from gateway.fields import FieldGroup, FieldSpec, FlagLayout

BIKE: Final = "ble:2ad2"
TREADMILL: Final = "ble:2acd"
ROWER: Final = "ble:2ad1"
CROSS_TRAINER: Final = "ble:2ace"
FTMS_DATA: Final = frozenset({BIKE, TREADMILL, ROWER, CROSS_TRAINER})


@dataclass(frozen=True)
class Quirk:
    """One deviation. Only the knobs a quirk sets are non-default."""

    name: str
    sources: frozenset[str]
    seen: str
    force_bits: int = 0
    resolution: tuple[tuple[str, Fraction], ...] = ()
    extra_groups: tuple[FieldGroup, ...] = ()
    trailing_bytes: int = 0
    zero_is_unavailable: tuple[str, ...] = ()


CADENCE_WITHOUT_FLAG = Quirk(
    name="cadence_without_flag",
    sources=frozenset({BIKE}),
    force_bits=1 << 2,
    seen=(
        "TrackMyIndoorWorkout/TrackMyIndoorWorkout lib/devices/device_descriptors/"
        "life_fitness_bike_descriptor.dart and test/life_fitness_indoor_bike_test.dart @0ac2ac0 "
        "(issue #462): Life Fitness bikes send Instantaneous Cadence without flag bit 2 (flags 0x09fa, "
        "26 bytes); verified in tests/data/captures"
    ),
)
TRAILING_BYTE = Quirk(
    name="trailing_byte",
    sources=FTMS_DATA,
    trailing_bytes=1,
    seen=(
        "TrackMyIndoorWorkout/TrackMyIndoorWorkout#525 and test/concept2_old_ftms_test.dart @0ac2ac0: a "
        "Concept2 PM console sends 20 bytes where its flags (0x0aff) account for 19; verified in "
        "tests/data/captures"
    ),
)
TREADMILL_BIT13_STEPS = Quirk(
    name="bit13_step_count",
    sources=frozenset({TREADMILL}),
    extra_groups=(FieldGroup(13, (FieldSpec("step_count", "u24"),)),),
    seen=(
        "dudanov/pyftms src/pyftms/models/realtime_data/treadmill.py @675c5cb decodes reserved bit 13 as a "
        "u24 'Steps Count' after Force on Belt; ftms.md reports vendor use of bit 13. Without this quirk the "
        "three bytes are kept unparsed (reserved bit)"
    ),
)
ROWER_WHOLE_SPM = Quirk(
    name="whole_strokes_per_minute",
    sources=frozenset({ROWER}),
    resolution=(("stroke_rate_spm", Fraction(1)), ("avg_stroke_rate_spm", Fraction(1))),
    seen="reported in ftms.md, not verified: stroke rate in whole strokes/min instead of 0.5",
)
RESISTANCE_X10 = Quirk(
    name="resistance_x10",
    sources=frozenset({BIKE, ROWER}),
    resolution=(("resistance_level", Fraction(1, 10)),),
    seen="reported in ftms.md, not verified: resistance level sent in tenths where the table says units",
)
SPEED_ZERO_UNAVAILABLE = Quirk(
    name="speed_zero_unavailable",
    sources=frozenset({CROSS_TRAINER}),
    zero_is_unavailable=("speed_kmh",),
    seen=(
        "cagnulein/qdomyos-zwift#4818: Life Fitness ellipticals flag Instantaneous Speed but send 0x0000 in "
        "every packet"
    ),
)
LEGACY_HRM_PAGE_BYTE = Quirk(
    name="legacy_page_byte",
    sources=frozenset(f"ant:hrm:{p}" for p in range(8)),
    seen="GoldenCheetah ANTMessage.cpp: older ANT+ straps send no page number in byte 0 (gateway.ant)",
)

SPEC_PROFILE: Final = "specification"
PROFILES: Final[dict[str, tuple[Quirk, ...]]] = {
    # For an operator to name explicitly (device list `quirks = "..."`); keyed by what they do.
    SPEC_PROFILE: (),
    "bike-cadence-without-flag": (CADENCE_WITHOUT_FLAG,),
    "ftms-trailing-byte": (TRAILING_BYTE,),
    "treadmill-bit13-step-count": (TREADMILL_BIT13_STEPS,),
    "rower-whole-spm": (ROWER_WHOLE_SPM,),
    "resistance-x10": (RESISTANCE_X10,),
    "elliptical-speed-zero-unavailable": (SPEED_ZERO_UNAVAILABLE,),
    "ant-hrm-legacy": (LEGACY_HRM_PAGE_BYTE,),
    # Named equipment, kept so that configurations and `vitalab decode --model` written for them work.
    "life fitness bike": (CADENCE_WITHOUT_FLAG,),
    "life fitness elliptical": (SPEED_ZERO_UNAVAILABLE,),
    "concept2 pm old ftms": (TRAILING_BYTE,),
}


def name_key(text: str) -> str:
    """A manufacturer or model name for comparison: case, whitespace, ``-``, ``_`` and NULs removed."""
    return re.sub(r"[\s\-_\x00]+", "", text.casefold())


def version(text: str | None) -> tuple[int, ...] | None:
    """A firmware revision as the tuple of the numbers in it; ``None`` when it has none."""
    if text is None:
        return None
    numbers = re.findall(r"\d+", text)
    return tuple(int(n) for n in numbers) if numbers else None


@dataclass(frozen=True)
class DeviceIdentity:
    """What a device says it is: the Device Information Service strings (any may be missing)."""

    manufacturer: str | None = None
    model: str | None = None
    firmware: str | None = None
    hardware: str | None = None
    software: str | None = None


@dataclass(frozen=True)
class Rule:
    """Devices of ``manufacturer`` (and, when given, whose model number starts with ``model`` and whose
    firmware revision is within [``firmware_from``, ``firmware_before``)) get ``quirks``."""

    name: str
    manufacturer: str
    quirks: tuple[Quirk, ...]
    seen: str
    model: str | None = None
    firmware_from: str | None = None
    firmware_before: str | None = None

    def matches(self, identity: DeviceIdentity) -> bool:
        if identity.manufacturer is None or name_key(identity.manufacturer) != name_key(self.manufacturer):
            return False
        if self.model is not None and (
            identity.model is None or not name_key(identity.model).startswith(name_key(self.model))
        ):
            return False
        if self.firmware_from is None and self.firmware_before is None:
            return True
        found = version(identity.firmware)
        if found is None:
            return False
        low, high = version(self.firmware_from), version(self.firmware_before)
        return (low is None or found >= low) and (high is None or found < high)


RULES: Final[tuple[Rule, ...]] = (
    Rule(
        name="life-fitness",
        manufacturer="LifeFitness",
        quirks=(CADENCE_WITHOUT_FLAG, SPEED_ZERO_UNAVAILABLE),
        seen=(
            "the manufacturer name is TrackMyIndoorWorkout's LifeFitnessMixin.lfManufacturer "
            '("LifeFitness"); that project finds Life Fitness machines by the advertised name prefix "LF" '
            "and does not read the DIS manufacturer name for them, so the DIS string is not verified. "
            "The quirks apply per characteristic: cadence on bikes (2ad2), speed on ellipticals (2ace)"
        ),
    ),
    Rule(
        name="concept2-pm",
        manufacturer="Concept2",
        model="PM",
        quirks=(TRAILING_BYTE,),
        seen=(
            'TrackMyIndoorWorkout concept2_rower.dart (vendorName "Concept2", modelName "PM5", '
            'manufacturerNamePart "Concept2") and test/concept2_old_ftms_test.dart: the extra byte of '
            '"old FTMS" firmware. Which firmware stopped sending it is not known to us, so every firmware '
            "gets the quirk; it only allows one byte more, a frame without it decodes the same"
        ),
    ),
)


@dataclass(frozen=True)
class Selection:
    """The quirks chosen for a device and why (``origin``: ``specification``, ``profile:<name>`` or
    ``rule:<name>``)."""

    quirks: tuple[Quirk, ...] = ()
    origin: str = SPEC_PROFILE

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(q.name for q in self.quirks)

    def has(self, quirk: Quirk) -> bool:
        return quirk in self.quirks


SPEC: Final = Selection()


def profile(name: str | None) -> Selection | None:
    """The profile an operator named (trimmed, case-insensitive); ``None`` for no name or an unknown one."""
    if name is None:
        return None
    key = name.strip().casefold()
    found = PROFILES.get(key)
    return None if found is None else Selection(found, f"profile:{key}")


def select(
    identity: DeviceIdentity | None, *, override: str | None = None, rules: tuple[Rule, ...] = RULES
) -> Selection:
    """The quirks of a device: the named profile if any (raises ``ValueError`` for an unknown name), else
    those of every rule the identity matches, else none."""
    if override is not None:
        named = profile(override)
        if named is None:
            raise ValueError(f"unknown quirk profile {override!r}; known: {', '.join(PROFILES)}")
        return named
    if identity is None:
        return SPEC
    matched = [r for r in rules if r.matches(identity)]
    if not matched:
        return SPEC
    quirks = tuple(dict.fromkeys(q for r in matched for q in r.quirks))
    return Selection(quirks, "rule:" + "+".join(r.name for r in matched))


def quirks_for(selection: Selection, source: str) -> tuple[Quirk, ...]:
    """The selected quirks that concern one characteristic (or ANT+ page)."""
    return tuple(q for q in selection.quirks if source in q.sources)


@dataclass(frozen=True)
class Applied:
    """The quirks of one selection for one source, folded into decoder settings."""

    layout: FlagLayout
    names: tuple[str, ...] = ()
    force_bits: int = 0
    trailing_bytes: int = 0
    zero_is_unavailable: tuple[str, ...] = ()


_APPLIED: dict[tuple[int, tuple[str, ...]], tuple[FlagLayout, Applied]] = {}


def apply(layout: FlagLayout, selection: Selection = SPEC) -> Applied:
    """Fold the selected quirks for ``layout.source`` into an effective layout and settings.

    Cached per (layout, quirk names): the effective layout keeps its compiled read plans between frames.
    """
    if not selection.quirks:  # the common case: the specification's reading
        return _apply_cached(layout, ())
    return _apply_cached(layout, quirks_for(selection, layout.source))


def _apply_cached(layout: FlagLayout, quirks: tuple[Quirk, ...]) -> Applied:
    cache_key = (id(layout), tuple(q.name for q in quirks))
    cached = _APPLIED.get(cache_key)
    if cached is not None and cached[0] is layout:
        return cached[1]
    applied = _apply(layout, quirks)
    _APPLIED[cache_key] = (layout, applied)
    return applied


def _apply(layout: FlagLayout, quirks: tuple[Quirk, ...]) -> Applied:
    if not quirks:
        return Applied(layout=layout)
    resolution = {name: res for q in quirks for name, res in q.resolution}
    extra = tuple(g for q in quirks for g in q.extra_groups)
    effective = layout.with_resolution(resolution) if resolution else layout
    if extra:
        effective = effective.with_groups(extra)
    force = 0
    for q in quirks:
        force |= q.force_bits
    return Applied(
        layout=effective,
        names=tuple(q.name for q in quirks),
        force_bits=force,
        trailing_bytes=max(q.trailing_bytes for q in quirks),
        zero_is_unavailable=tuple(n for q in quirks for n in q.zero_is_unavailable),
    )
