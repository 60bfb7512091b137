"""A small, complete data set for API tests, written with plain SQL (every table a route reads)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from uuid import UUID

import psycopg

from analytics.version import ALGORITHM_VERSION

T0 = datetime(2026, 11, 25, 9, 0, tzinfo=UTC)
NOW = T0 + timedelta(hours=3)
PARTICIPANT = UUID("3f6c1c52-5d4e-4b7a-9a51-0c8f4c1e2a10")


@dataclass(frozen=True)
class Seeded:
    session_id: int


def seed(url: str) -> Seeded:
    """Sites gym-a (Europe/Oslo) and gym-b; bike-1 and strap-1 at gym-a with 30 samples and RR intervals from
    ``T0``; a participant checked in on bike-1 at ``T0`` (open); one session; one dead letter; stored
    analytics for the day."""
    with psycopg.connect(url) as conn:
        conn.execute(
            "INSERT INTO sites (site_id, timezone) VALUES ('gym-a', 'Europe/Oslo'), ('gym-b', 'UTC')"
        )
        conn.execute(
            "INSERT INTO devices (device_id, site_id, kind, online, last_seen) VALUES "
            "('bike-1', 'gym-a', 'bike', true, %s), ('strap-1', 'gym-a', 'hr_strap', true, %s)",
            (T0 + timedelta(seconds=29), T0 + timedelta(seconds=29)),
        )
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO samples (device_id, t, site_id, seq, power_w, hr_bpm) "
                "VALUES (%s, %s, 'gym-a', %s, %s, %s)",
                [("bike-1", T0 + timedelta(seconds=i), i, 100 + i, 120) for i in range(30)],
            )
            cur.executemany(
                "INSERT INTO rr_intervals (device_id, t, idx, rr_ms) VALUES ('strap-1', %s, %s, %s)",
                [(T0 + timedelta(seconds=i // 2), i % 2, 500.0 + i) for i in range(20)],
            )
        conn.execute(
            "INSERT INTO participants (participant_id, site_id, external_ref, birth_year, sex) "
            "VALUES (%s, 'gym-a', 'm0001', 1990, 'female')",
            (PARTICIPANT,),
        )
        conn.execute(
            "INSERT INTO device_assignments (device_id, participant_id, started_at) "
            "VALUES ('bike-1', %s, %s)",
            (PARTICIPANT, T0),
        )
        row = conn.execute(
            "INSERT INTO sessions (site_id, participant_id, device_ids, started_at, ended_at, source, "
            "algorithm_version, summary, duration_s) "
            "VALUES ('gym-a', %s, ARRAY['bike-1'], %s, %s, 'check_in', %s, '{\"duration_s\": 29.0}', 29) "
            "RETURNING session_id",
            (PARTICIPANT, T0, T0 + timedelta(seconds=29), ALGORITHM_VERSION),
        ).fetchone()
        assert row is not None
        conn.execute(
            "INSERT INTO dead_letters (topic, reason, detail, path, device_id, payload, payload_size) VALUES "
            "('vitalab/v1/gym-a/dev/bike-1/telemetry', 'schema', 'bad', '$.v', 'bike-1', '\\x7b7d'::bytea, 2)"
        )
    return Seeded(session_id=row[0])
