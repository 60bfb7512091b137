"""Response models of the HTTP API (pydantic at the edge)."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict


class Health(BaseModel):
    status: str
    database: bool
    timescale: bool | None = None


class Device(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    device_id: str
    site_id: str
    kind: str | None
    vendor: str | None
    model: str | None
    firmware: str | None
    transport: str | None
    online: bool | None
    training: str | None
    first_seen: datetime
    last_seen: datetime | None


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
