"""A small gym world for the export tests, written with plain SQL, and an independent Python model of which
rows an export may contain (the consent rule of api/exports/consent.py re-implemented over plain reads of
the tables, so the SQL is checked against something that is not itself).

Sites gym-a and gym-b. Study ``s-a`` (gym-a, every scope) and ``s-b`` (gym-b, derived and raw samples).
At gym-a, from T0:
* P1: consent to everything from T0 - 1 day; wears strap-a1 (checked out T0 .. T0+2h) and rides bike-a1 in
  a session T0+10min .. T0+40min.
* P2: consent to derived + raw from T0 - 1 day, narrowed to derived only at T0+20min; wears strap-a2
  T0 .. T0+1h, session on bike-a2 T0+5min .. T0+15min.
* P3: consent to derived + raw only from T0+30min; strap-a3 T0 .. T0+1h; sessions on bike-a3 at
  T0+5min .. T0+25min (before consent) and T0+35min .. T0+50min.
* P4: consent from T0 - 1 day, withdrawn at T0+1h; strap-a4 T0 .. T0+30min; a session on bike-a4.
At gym-b: P5 consents to s-b; strap-b1 T0 .. T0+1h. P1 also has a consent record in s-b written straight
into the table (the API refuses it): the study must still not see P1 (not one of its sites).
Straps sample every 2 s from T0 - 30 min to T0 + 3 h, bikes every second from T0 to T0 + 1 h; straps carry
two RR intervals per sample.
"""

from __future__ import annotations

import hashlib
import hmac
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import psycopg

from analytics.version import ALGORITHM_VERSION

T0 = datetime(2026, 11, 2, 8, 0, tzinfo=UTC)
SNAPSHOT = T0 + timedelta(hours=4)
ALL = ["derived_metrics", "raw_samples", "rr_intervals", "pooled_analyses", "full_profile"]
P = {f"P{i}": UUID(f"00000000-0000-4000-8000-00000000000{i}") for i in range(1, 6)}
KEY_A = bytes(range(32))
KEY_B = bytes(range(32, 64))
KEY_C = bytes(range(64, 96))


def minutes(m: float) -> datetime:
    return T0 + timedelta(minutes=m)


def pseudonym(key: bytes, participant: UUID) -> str:
    """RFC 2104 HMAC-SHA256 with Python's hmac module, first 32 hex digits."""
    return hmac.new(key, participant.bytes, hashlib.sha256).hexdigest()[:32]


def seed(url: str) -> None:
    with psycopg.connect(url) as conn:
        conn.execute("INSERT INTO sites (site_id, timezone) VALUES ('gym-a', 'UTC'), ('gym-b', 'UTC')")
        devices = [("strap-a1", "gym-a", "hr_strap"), ("strap-a2", "gym-a", "hr_strap")]
        devices += [("strap-a3", "gym-a", "hr_strap"), ("strap-a4", "gym-a", "hr_strap")]
        devices += [(f"bike-a{i}", "gym-a", "bike") for i in range(1, 5)]
        devices += [("strap-b1", "gym-b", "hr_strap")]
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO devices (device_id, site_id, kind) VALUES (%s, %s, %s)", devices)
            people = [
                (P[f"P{i}"], "gym-a", 1980 + i, "female" if i % 2 else "male", 60.0 + i) for i in range(1, 5)
            ]
            people.append((P["P5"], "gym-b", 1999, "male", 80.0))
            cur.executemany(
                "INSERT INTO participants (participant_id, site_id, birth_year, sex, weight_kg) "
                "VALUES (%s, %s, %s, %s, %s)",
                people,
            )
            straps = [("strap-a1", "P1", 0, 120), ("strap-a2", "P2", 0, 60), ("strap-a3", "P3", 0, 60)]
            straps += [("strap-a4", "P4", 0, 30), ("strap-b1", "P5", 0, 60)]
            cur.executemany(
                "INSERT INTO device_assignments (device_id, participant_id, started_at, ended_at) "
                "VALUES (%s, %s, %s, %s)",
                [(d, P[p], minutes(a), minutes(b)) for d, p, a, b in straps],
            )
            rows: list[tuple[Any, ...]] = []
            rr: list[tuple[Any, ...]] = []
            for d, site, kind in devices:
                if kind == "hr_strap":
                    for k in range(0, 210 * 60, 2):
                        t = minutes(-30) + timedelta(seconds=k)
                        rows.append((d, t, site, None, None, 100.0 + (k % 60) + 0.5))
                        rr.extend([(d, t, 0, 600.0 + k % 7), (d, t, 1, 601.5 + k % 5)])
                else:
                    for k in range(3600):
                        rows.append(
                            (d, T0 + timedelta(seconds=k), site, 150.0 + k % 50, 80.0 + k % 20, 110.0)
                        )
            with cur.copy(
                "COPY samples (device_id, t, site_id, power_w, cadence_rpm, hr_bpm) FROM STDIN"
            ) as cp:
                for r in rows:
                    cp.write_row(r)
            with cur.copy("COPY rr_intervals (device_id, t, idx, rr_ms) FROM STDIN") as cp:
                for r in rr:
                    cp.write_row(r)
            sessions = [
                ("P1", ["bike-a1", "strap-a1"], 10, 40),
                ("P2", ["bike-a2", "strap-a2"], 5, 15),
                ("P3", ["bike-a3", "strap-a3"], 5, 25),
                ("P3", ["bike-a3", "strap-a3"], 35, 50),
                ("P4", ["bike-a4", "strap-a4"], 5, 20),
            ]
            cur.executemany(
                "INSERT INTO sessions (site_id, participant_id, device_ids, started_at, ended_at, source, "
                "algorithm_version, summary, duration_s, hr_avg_bpm, energy_kcal, moderate_min, "
                "vigorous_min, rmssd_ms) "
                "VALUES ('gym-a', %s, %s, %s, %s, 'check_in', %s, %s, %s, 130.5, 50.25, 3, 2, 40.5)",
                [
                    (
                        P[p],
                        devs,
                        minutes(a),
                        minutes(b),
                        ALGORITHM_VERSION,
                        '{"hr_max_bpm": 171}',
                        (b - a) * 60.0,
                    )
                    for p, devs, a, b in sessions
                ],
            )
            cur.executemany(
                "INSERT INTO participant_daily (participant_id, day, sessions, load, load_7d, ctl, atl, tsb, "
                "moderate_min, vigorous_min, who_min_7d, who_status, pai_as, rhr_bpm, algorithm_version) "
                "VALUES (%s, %s, 1, 10, 10, 1, 2, 0, 5, 3, 11, 'below', 1.5, 55, %s)",
                [
                    (P[p], day, ALGORITHM_VERSION)
                    for p in ("P1", "P3")
                    for day in ("2026-11-01", "2026-11-02")
                ],
            )
        conn.execute(
            "INSERT INTO studies (study_id, title, starts_on, scopes, status) VALUES "
            "('s-a', 'A', '2026-10-01', %s, 'recruiting'), "
            "('s-b', 'B', '2026-10-01', %s, 'recruiting'), ('s-c', 'C', '2026-10-01', %s, 'recruiting')",
            (ALL, ["derived_metrics", "raw_samples"], ALL),
        )
        conn.execute("INSERT INTO study_sites VALUES ('s-a', 'gym-a'), ('s-b', 'gym-b'), ('s-c', 'gym-a')")
        conn.execute(
            "INSERT INTO study_keys VALUES ('s-a', %s, %s), ('s-b', %s, %s), ('s-c', %s, %s)",
            (KEY_A, T0, KEY_B, T0, KEY_C, T0),
        )
        everything = ["derived_metrics", "raw_samples", "rr_intervals"]
        records = [
            ("s-a", "P1", "give", everything, -1440),
            ("s-a", "P2", "give", ["derived_metrics", "raw_samples"], -1440),
            ("s-a", "P2", "give", ["derived_metrics"], 20),
            ("s-a", "P3", "give", ["derived_metrics", "raw_samples"], 30),
            ("s-a", "P4", "give", everything, -1440),
            ("s-a", "P4", "withdraw", [], 60),
            ("s-b", "P5", "give", ["derived_metrics", "raw_samples"], -1440),
            ("s-b", "P1", "give", ["derived_metrics", "raw_samples"], -1440),
            ("s-c", "P1", "give", everything, -1440),
        ]
        for study, p, _, _, _ in records:
            conn.execute(
                "INSERT INTO study_enrolments (study_id, participant_id, enrolled_at) VALUES (%s, %s, %s) "
                "ON CONFLICT DO NOTHING",
                (study, P[p], minutes(-1440)),
            )
        for study, p, action, scopes, at in records:
            conn.execute(
                "INSERT INTO study_consents (study_id, participant_id, consent_version, scopes, given_at, "
                "withdrawn_at, recorded_at, recorded_by) VALUES (%s, %s, %s, %s, %s, %s, %s, 'kiosk')",
                (
                    study,
                    P[p],
                    "v1" if action == "give" else None,
                    scopes,
                    minutes(at) if action == "give" else None,
                    minutes(at) if action == "withdraw" else None,
                    minutes(at),
                ),
            )


# --- the model --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Window:
    start: datetime
    end: datetime
    scopes: frozenset[str]


class Model:
    """The rows an export may contain, worked out in Python from plain reads of the tables."""

    def __init__(self, url: str, study: str, snapshot: datetime = SNAPSHOT) -> None:
        self.study, self.snapshot = study, snapshot
        with psycopg.connect(url) as conn:
            found = conn.execute("SELECT hmac_key FROM study_keys WHERE study_id = %s", (study,)).fetchone()
            assert found is not None
            self.key = bytes(found[0])
            self.sites = {
                r[0] for r in conn.execute("SELECT site_id FROM study_sites WHERE study_id = %s", (study,))
            }
            self.site_of = {
                r[0]: r[1] for r in conn.execute("SELECT participant_id, site_id FROM participants")
            }
            self.kind = {r[0]: r[1] for r in conn.execute("SELECT device_id, kind FROM devices")}
            self.records = conn.execute(
                "SELECT participant_id, id, scopes, given_at, withdrawn_at, recorded_at FROM study_consents "
                "WHERE study_id = %s",
                (study,),
            ).fetchall()
            self.assignments = conn.execute(
                "SELECT device_id, participant_id, started_at, ended_at FROM device_assignments"
            ).fetchall()
            self.sessions = conn.execute(
                "SELECT session_id, participant_id, device_ids, started_at, ended_at, site_id FROM sessions"
            ).fetchall()
            self.samples = conn.execute(
                "SELECT device_id, t, site_id, hr_bpm, power_w FROM samples"
            ).fetchall()
            self.rr = conn.execute("SELECT device_id, t, idx, rr_ms FROM rr_intervals").fetchall()

    def windows(self, participant: UUID) -> tuple[list[Window], frozenset[str] | None]:
        """Consent windows and the current scopes (None: withdrawn or never consented)."""
        mine = sorted(
            ((r[3] or r[4], r[1], r) for r in self.records if r[0] == participant and r[5] <= self.snapshot),
            key=lambda x: (x[0], x[1]),
        )
        out = []
        for i, (at, _, r) in enumerate(mine):
            end = mine[i + 1][0] if i + 1 < len(mine) else datetime.max.replace(tzinfo=UTC)
            if r[3] is not None:
                out.append(Window(at, min(end, self.snapshot), frozenset(r[2])))
        current = mine[-1][2] if mine else None
        return out, (frozenset(current[2]) if current is not None and current[3] is not None else None)

    def consented(self, participant: UUID, scope: str, t: datetime, t_end: datetime | None = None) -> bool:
        if self.site_of[participant] not in self.sites:
            return False
        wins, current = self.windows(participant)
        if current is None or scope not in current:
            return False
        end = t if t_end is None else t_end
        # inside one merged stretch of windows that include the scope
        stretches: list[list[datetime]] = []
        for w in sorted(wins, key=lambda w: w.start):
            if scope not in w.scopes or w.start >= w.end:
                continue
            if stretches and stretches[-1][1] >= w.start:
                stretches[-1][1] = max(stretches[-1][1], w.end)
            else:
                stretches.append([w.start, w.end])
        return any(a <= t and end < b for a, b in stretches)

    def people(self, scope: str) -> set[UUID]:
        return {
            p
            for p in self.site_of
            if self.site_of[p] in self.sites and (self.windows(p)[1] or set()) >= {scope}
        }

    def owner(self, device: str, t: datetime) -> set[UUID]:
        """Who the sample of ``device`` at ``t`` belongs to."""
        found = set()
        if self.kind[device] == "hr_strap":
            for d, p, a, b in self.assignments:
                if d == device and a <= t and (b is None or t < b):
                    found.add(p)
        else:
            for _, p, devs, a, b, _ in self.sessions:
                if device in devs and a <= t <= b and p is not None:
                    found.add(p)
        return found

    def sample_rows(self) -> list[tuple[str, datetime, str, float | None, float | None]]:
        """(pseudonym, t, device_kind, hr_bpm, power_w) in export order."""
        out = []
        for d, t, site, hr, power in self.samples:
            if site not in self.sites:
                continue
            for p in self.owner(d, t):
                if self.consented(p, "raw_samples", t):
                    out.append((pseudonym(self.key, p), d, t, self.kind[d], hr, power))
        out.sort(key=lambda r: (r[0], r[1], r[2]))
        return [(a, t, k, hr, pw) for a, _, t, k, hr, pw in out]

    def rr_rows(self) -> list[tuple[str, datetime, int, float]]:
        out = []
        for d, t, idx, value in self.rr:
            if self.site_of_device(d) not in self.sites:
                continue
            for p in self.owner(d, t):
                if self.consented(p, "rr_intervals", t):
                    out.append((pseudonym(self.key, p), d, t, idx, value))
        out.sort(key=lambda r: (r[0], r[1], r[2], r[3]))
        return [(a, t, i, v) for a, _, t, i, v in out]

    def site_of_device(self, device: str) -> str:
        return {"a": "gym-a", "b": "gym-b"}[device.split("-")[1][0]]

    def session_rows(self) -> list[tuple[str, datetime, datetime, int]]:
        out = []
        for sid, p, _, a, b, site in self.sessions:
            if p is not None and site in self.sites and self.consented(p, "derived_metrics", a, b):
                out.append((pseudonym(self.key, p), a, b, sid))
        return sorted(out)


def by_participant(rows: list[tuple[Any, ...]]) -> dict[str, int]:
    counts: dict[str, int] = defaultdict(int)
    for r in rows:
        counts[r[0]] += 1
    return dict(counts)
