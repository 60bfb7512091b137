"""What the live floor reads from the database: the site's devices with their newest sample (the snapshot
before the broker's retained messages arrive) and who is checked in on them (for the heart-rate zone).
Telemetry itself never comes from here: the live view follows the broker (:mod:`api.live.hub`)."""

from __future__ import annotations

from dataclasses import dataclass

from psycopg import AsyncConnection, sql

from api.live.floor import KnownDevice
from api.queries import fetch_all


@dataclass(frozen=True, slots=True)
class CheckedIn:
    device_id: str
    hr_max_bpm: float | None
    birth_year: int | None


async def known_devices(conn: AsyncConnection, site_id: str) -> list[KnownDevice]:
    """The site's devices with their stored state and newest sample (one index probe per device)."""
    query = sql.SQL(
        "SELECT d.device_id, d.kind, d.online, d.training, d.errors, d.state_at, d.last_seen, "
        "s.power_w::float8 AS power_w, s.speed_kmh::float8 AS speed_kmh, "
        "s.cadence_rpm::float8 AS cadence_rpm, s.stroke_rate_spm::float8 AS stroke_rate_spm, "
        "s.hr_bpm::float8 AS hr_bpm, s.t AS sample_t "
        "FROM devices d LEFT JOIN LATERAL "
        "(SELECT t, power_w, speed_kmh, cadence_rpm, stroke_rate_spm, hr_bpm FROM samples "
        "WHERE samples.device_id = d.device_id ORDER BY t DESC LIMIT 1) s ON true "
        "WHERE d.site_id = %s ORDER BY d.device_id"
    )
    return await fetch_all(conn, KnownDevice, query, (site_id,))


async def checked_in(conn: AsyncConnection, site_id: str) -> list[CheckedIn]:
    """The open check-ins on the site's devices, with what the zone needs of the participant (no identity)."""
    query = sql.SQL(
        "SELECT DISTINCT ON (a.device_id) a.device_id, p.hr_max_bpm::float8 AS hr_max_bpm, p.birth_year "
        "FROM device_assignments a JOIN devices d USING (device_id) "
        "JOIN participants p USING (participant_id) "
        "WHERE d.site_id = %s AND a.ended_at IS NULL ORDER BY a.device_id, a.started_at DESC"
    )
    return await fetch_all(conn, CheckedIn, query, (site_id,))
