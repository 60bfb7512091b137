"""A site with three weeks of stored analytics, written with plain SQL, for the site export tests.

gym-x (Europe/Oslo): four machines and a strap; 14 members (8 men, 6 women, birth years spread over the age
bands). Sessions every day from 2026-11-23 to 2026-12-13 (some without a known participant, some across an
hour and a slot boundary, one across local midnight), device_hourly rows for some of their hours (fractional
seconds), and participant_daily rows that make week 1 a suppressed breakdown (8 men, 2 women: the women are
too few and the men would reveal them), week 2 a suppressed week (4 members) and week 3 published in full
(7 men, 6 women)."""

from __future__ import annotations

import random
from datetime import UTC, date, datetime, timedelta
from uuid import UUID

import psycopg

from analytics.version import ALGORITHM_VERSION

SITE = "gym-x"
OTHER_SITE = "gym-y"
SINCE = date(2026, 11, 23)
UNTIL = date(2026, 12, 13)
NOW = datetime(2026, 12, 14, 12, 0, tzinfo=UTC)
MACHINES = ("bike-1", "bike-2", "row-1", "tread-1")
MEMBERS = [UUID(int=0x5170_0000_0000_4000_8000_0000_0000_0000 + i) for i in range(14)]
SEX = ["male"] * 8 + ["female"] * 6
BIRTH = [1950 + 4 * i for i in range(14)]
WEEK_MEMBERS = {
    0: [*range(8), 8, 9],  # 8 men, 2 women
    1: [0, 1, 8, 9],  # 4 members
    2: [*range(7), *range(8, 14)],  # 7 men, 6 women
}


def seed(url: str) -> None:
    rnd = random.Random(11)
    with psycopg.connect(url) as conn:
        conn.execute(
            "INSERT INTO sites (site_id, timezone) VALUES (%s, 'Europe/Oslo'), (%s, 'UTC')",
            (SITE, OTHER_SITE),
        )
        with conn.cursor() as cur:
            kinds = {"bike-1": "bike", "bike-2": "bike", "row-1": "rower", "tread-1": "treadmill"}
            cur.executemany(
                "INSERT INTO devices (device_id, site_id, kind) VALUES (%s, %s, %s)",
                [(d, SITE, kinds[d]) for d in MACHINES]
                + [("strap-x", SITE, "hr_strap"), ("bike-y", OTHER_SITE, "bike")],
            )
            cur.executemany(
                "INSERT INTO participants (participant_id, site_id, sex, birth_year) VALUES (%s, %s, %s, %s)",
                [(p, SITE, s, b) for p, s, b in zip(MEMBERS, SEX, BIRTH, strict=True)],
            )
            sessions = []
            hourly: dict[tuple[str, datetime], tuple[float, int]] = {}
            for day in range(21):
                base = datetime(2026, 11, 23, 6, 0, tzinfo=UTC) + timedelta(days=day)
                for n in range(5):
                    device = MACHINES[(day + n) % len(MACHINES)]
                    start = base + timedelta(minutes=97 * n + rnd.randint(0, 40), seconds=rnd.random() * 59)
                    end = start + timedelta(minutes=rnd.randint(10, 75), seconds=rnd.random() * 59)
                    who = None if n == 4 else MEMBERS[(day * 3 + n) % len(MEMBERS)]
                    sessions.append((who, [device], start, end))
                    hour = start.replace(minute=0, second=0, microsecond=0)
                    hourly[(device, hour)] = (round(rnd.random() * 3600, 3), rnd.randint(1, 60))
            # across local midnight (23:40 to 00:20 in Oslo) with the strap on a machine
            late = datetime(2026, 11, 28, 22, 40, tzinfo=UTC)
            sessions.append((MEMBERS[3], ["bike-2", "strap-x"], late, late + timedelta(minutes=40)))
            cur.executemany(
                "INSERT INTO sessions (site_id, participant_id, device_ids, started_at, ended_at, source, "
                "algorithm_version) VALUES (%s, %s, %s, %s, %s, 'check_in', %s)",
                [(SITE, p, d, s, e, ALGORITHM_VERSION) for p, d, s, e in sessions],
            )
            cur.executemany(
                "INSERT INTO device_hourly (device_id, hour, site_id, in_session_s, minutes_with_data, "
                "sessions_started) VALUES (%s, %s, %s, %s, %s, 1)",
                [(d, h, SITE, s, m) for (d, h), (s, m) in hourly.items()],
            )
            daily = []
            for week, members in WEEK_MEMBERS.items():
                for i in members:
                    for dow in rnd.sample(range(7), rnd.randint(1, 3)):
                        day_ = SINCE + timedelta(days=7 * week + dow)
                        load = round(rnd.uniform(20, 140), 2)
                        moderate = round(rnd.uniform(5, 90), 1)
                        vigorous = round(rnd.uniform(0, 40), 1)
                        daily.append((MEMBERS[i], day_, 1, load, moderate, vigorous, ALGORITHM_VERSION))
            cur.executemany(
                "INSERT INTO participant_daily (participant_id, day, sessions, load, load_7d, ctl, atl, tsb, "
                "moderate_min, vigorous_min, who_min_7d, who_status, pai_as, algorithm_version) "
                "VALUES (%s, %s, %s, %s, 0, 0, 0, 0, %s, %s, 0, 'below', 0, %s)",
                daily,
            )
