"""Response models of the HTTP API (pydantic at the edge)."""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from api.health import CheckResult
from vitalab.wire.registry import DeviceKind
from vitalab.wire.topics import ID_PATTERN


class Health(BaseModel):
    status: Literal["ok", "degraded", "unavailable"]
    """ok; degraded: the database answers but a check failed (see ``checks``); unavailable: no database."""
    database: bool
    timescale: bool | None = None
    checks: list[CheckResult] = Field(default_factory=list)


class Device(BaseModel):
    device_id: str
    site_id: str
    kind: DeviceKind | None
    vendor: str | None
    model: str | None
    firmware: str | None
    transport: str | None
    online: bool
    """False once the device said it is offline (its state or last will) or has been silent (no sample or
    state) for longer than ``device_offline_after_s`` (setting); a device never heard of is offline."""
    last_heard: datetime | None
    """Device time of its newest sample or state."""
    training: str | None
    first_seen: datetime
    last_seen: datetime | None
    """Device time of its newest sample."""


class SampleOut(BaseModel):
    device_id: str
    t: datetime
    site_id: str
    seq: int | None
    received_at: datetime
    speed_kmh: float | None = None
    incline_pct: float | None = None
    distance_m: float | None = None
    energy_kcal: float | None = None
    power_w: float | None = None
    cadence_rpm: float | None = None
    stroke_rate_spm: float | None = None
    pace_s_per_500m: float | None = None
    hr_bpm: float | None = None
    elapsed_s: float | None = None
    resistance_level: float | None = None
    met: float | None = None


class RrOut(BaseModel):
    t: datetime
    idx: int
    rr_ms: float


class DeadLetterOut(BaseModel):
    id: int
    received_at: datetime
    topic: str
    reason: str
    detail: str
    path: str | None
    device_id: str | None
    payload_size: int
    payload_preview: str
    """The (capped) payload as text, undecodable bytes replaced."""


# --- analytics (sessions, participants, sites, device quality) ------------------------------------------


class SessionOut(BaseModel):
    """One session: a participant on a machine and/or wearing a strap (see analytics/sessions.py)."""

    session_id: int
    site_id: str
    participant_id: UUID | None
    device_ids: list[str]
    started_at: datetime
    ended_at: datetime
    source: str
    hr_source: str | None
    algorithm_version: str
    duration_s: float | None
    hr_avg_bpm: float | None
    trimp: float | None
    moderate_min: float | None
    vigorous_min: float | None
    pai_as: float | None
    rmssd_ms: float | None
    energy_kcal: float | None
    distance_m: float | None


class SessionDetail(SessionOut):
    summary: dict[str, Any]
    """Every per-session metric of analytics.session_metrics (null: not computable)."""
    computed_at: datetime


class ParticipantDay(BaseModel):
    """One row of participant_daily (definitions in analytics/participant.py)."""

    day: date
    sessions: int
    load: float
    load_7d: float
    ctl: float
    atl: float
    tsb: float
    acwr_ewma: float | None
    acwr_rolling: float | None
    moderate_min: float
    vigorous_min: float
    who_min_7d: float
    who_status: str
    pai_as: float
    pai_7d: float | None
    rhr_bpm: float | None
    rhr_7d_bpm: float | None
    rhr_28d_bpm: float | None
    rmssd_ms: float | None
    ln_rmssd_7d: float | None
    vo2max_ml_kg_min: float | None


class ParticipantLoad(BaseModel):
    participant_id: UUID
    algorithm_version: str
    days: list[ParticipantDay]


class DeviceUtilisation(BaseModel):
    device_id: str
    kind: DeviceKind | None
    in_session_s: list[float]
    """Seconds of each hour inside a session (first to last active sample)."""
    utilisation: list[float]
    """in_session_s / 3600"""
    minutes_with_data: list[int]


class SiteUtilisation(BaseModel):
    site_id: str
    hours: list[datetime]
    devices: list[DeviceUtilisation]


class SiteOccupancy(BaseModel):
    """Mean per local weekday (Monday first) and slot of the day over the range; null: not in the range."""

    site_id: str
    timezone: str
    since: datetime
    until: datetime
    slot_min: int
    machines_in_use: list[list[float | None]]
    """Time-weighted mean number of devices in a session, [weekday][slot]."""
    participants: list[list[float | None]]
    """Mean number of distinct participants with a session overlapping the slot, [weekday][slot]."""


class VitalityCell(BaseModel):
    """Aggregates of one site-week (and group); every figure is null when ``suppressed``."""

    week: date
    group: str
    suppressed: bool
    members: int | None
    sessions_per_member: float | None
    median_load: float | None
    median_mvpa_min: float | None
    mean_who_min: float | None
    who_share: float | None
    """Share of members with >= 150 moderate-equivalent minutes that week."""


class SiteVitality(BaseModel):
    site_id: str
    k_anonymity: int
    breakdown: str
    cells: list[VitalityCell]


class DeviceQualityDay(BaseModel):
    """One row of device_quality_daily (definitions in analytics/device_quality.py)."""

    day: date
    samples: int
    samples_received: int | None
    duplicates: int | None
    late_samples: int
    backfill_samples: int
    """Rows that came more than a minute behind in a catch-up stream (history, a buffer emptied after an
    outage): neither late data nor clock skew."""
    lag_p05_s: float | None
    lag_p50_s: float | None
    lag_p95_s: float | None
    clock_skew_s: float | None
    period_s: float | None
    on_s: float
    expected_samples: float
    received_ratio: float | None
    dropouts: int
    gaps: int
    gap_s: float
    hr_valid_share: float | None
    """Share of rows with a valid heart rate (for a strap: its wear fraction)."""


# --- participants and check-ins (a kiosk or front desk) ---------------------------------------------------

ExternalRef = Annotated[
    str,
    Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$",
        description="the site's pseudonymous reference (membership or kiosk number; never a name or e-mail)",
    ),
]
SiteOrDeviceId = Annotated[str, Field(pattern=ID_PATTERN)]


class ParticipantIn(BaseModel):
    """A pseudonymous participant: a profile for the metrics (age, sex, weight, HRrest/HRmax) and consent."""

    model_config = ConfigDict(extra="forbid")

    site_id: SiteOrDeviceId
    external_ref: ExternalRef | None = None
    """Registering the same reference at the same site again returns the participant (200) instead."""
    birth_year: int | None = Field(default=None, ge=1900, le=2100)
    """Not after the current year (checked by the route against its clock)."""
    sex: Literal["female", "male"] | None = None
    weight_kg: float | None = Field(default=None, ge=20, le=400)
    hr_rest_bpm: float | None = Field(default=None, ge=20, le=150)
    hr_max_bpm: float | None = Field(default=None, ge=100, le=250)
    consent_given_at: AwareDatetime | None = None
    """When the participant consented to the use of their data (null: no consent recorded)."""
    # checked by the route, which names the field: birth_year not in the future, hr_rest_bpm < hr_max_bpm,
    # consent_given_at within the accepted clock window


class ParticipantOut(BaseModel):
    participant_id: UUID
    site_id: str
    external_ref: str | None
    birth_year: int | None
    sex: str | None
    weight_kg: float | None
    hr_rest_bpm: float | None
    hr_max_bpm: float | None
    consent_given_at: datetime | None
    consent_withdrawn_at: datetime | None
    created_at: datetime


class CheckInIn(BaseModel):
    """A participant on (or wearing) a device from ``started_at`` (default: now). An open check-in of the
    device is closed at that time; ``ended_at`` records a check-in that is already over (a kiosk syncing
    its log)."""

    model_config = ConfigDict(extra="forbid")

    device_id: SiteOrDeviceId
    participant_id: UUID
    started_at: AwareDatetime | None = None
    ended_at: AwareDatetime | None = None


class CheckOutIn(BaseModel):
    """End the device's open check-in at ``ended_at`` (default: now); with ``participant_id``, only if it
    is that participant's."""

    model_config = ConfigDict(extra="forbid")

    ended_at: AwareDatetime | None = None
    participant_id: UUID | None = None


class CheckInOut(BaseModel):
    device_id: str
    participant_id: UUID
    started_at: datetime
    ended_at: datetime | None


# --- access: API keys and the audit log ---------------------------------------------------------------------

RoleName = Literal["admin", "operator", "researcher", "integrator", "kiosk"]
TEXT = r"^[^\x00-\x1f]*[^\s\x00-\x1f][^\x00-\x1f]*$"
"""Words on one line: no control characters, not only spaces."""


class KeyIn(BaseModel):
    """A new API key. ``scope``: ``*`` (everything; an admin's), ``site:<id>``, ``study:<id>``, ``site:*``,
    ``study:*``; a kiosk key is for exactly one site."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200, pattern=TEXT)
    owner: str = Field(
        min_length=1, max_length=200, pattern=TEXT, description="who holds it (a person, a team)"
    )
    role: RoleName
    scope: list[Annotated[str, Field(max_length=80)]] = Field(default_factory=list, max_length=1000)
    expires_at: AwareDatetime | None = None


class KeyOut(BaseModel):
    key_id: str
    name: str
    owner: str
    role: RoleName
    scope: list[str]
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None
    """Recorded at most once a minute."""
    revoked_at: datetime | None


class NewKeyOut(KeyOut):
    key: str
    """``vl_<key_id>_<secret>``: shown this once, stored only as a hash. Send it as
    ``Authorization: Bearer <key>``."""


class AuditEntry(BaseModel):
    id: int
    at: datetime
    key_id: str | None
    subject: str | None
    role: str | None
    action: str
    """``METHOD /path/{template}`` of a request, ``authenticate`` for a refused credential, ``keys.*`` for key
    management at the command line."""
    resource: str
    outcome: str
    """The HTTP status (``200``, ``404``), with the reason of a refused credential (``401 revoked``)."""
    address: str | None
