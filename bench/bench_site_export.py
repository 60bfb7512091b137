"""Benchmark: export a site's aggregates (utilisation, occupancy, vitality) beside the bare COPY of the same
utilisation query.

    python bench/bench_site_export.py [--days 365] [--devices 100] [--members 400] [--repeat 3]
                                      [--database-url postgresql://...]

Seeds a fresh database (dropped afterwards) with one site (Europe/Oslo) and ``--days`` days of stored
analytics: ``--devices`` machines with a ``device_hourly`` row for every opening hour (06:00-22:00 UTC) of
every day, eight sessions per machine and day, and ``--members`` members with a ``participant_daily`` row
every other day. Then, each in its own process (peak RSS is the export's):

- ``copy``: ``COPY (the utilisation query) TO STDOUT (FORMAT csv, HEADER)`` read and discarded: the rate
  PostgreSQL produces the utilisation rows at (the limit the formats are held against);
- ``csv``, ``parquet``: the utilisation dataset written by the site export (api/exports/site.py) to a
  temporary directory: one row per device and hour of the range;
- ``occupancy-csv``, ``vitality-csv``: the datasets computed in Python by the report code (no target: their
  rate is the NumPy report code's, printed for the record).

Each measurement runs ``--repeat`` times, interleaved with the others (the machine may be shared); the best
run of each is printed: rows/s, the share of the COPY rate (targets: CSV >= 60 %, Parquet >= 40 %, as the
study exports) and the peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from common import child_figures
from psycopg import sql

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analytics.version import ALGORITHM_VERSION
from api.exports import site
from api.exports.site import SiteExportParams, SiteExportSpec
from api.services.sites import hour_span
from vitalab.db import migrate

SITE = "gym"
FIRST_DAY = date(2026, 1, 5)
RUNS = {
    "copy": None,
    "csv": ("utilisation", "csv"),
    "parquet": ("utilisation", "parquet"),
    "occupancy-csv": ("occupancy", "csv"),
    "vitality-csv": ("vitality", "csv"),
}
TARGETS = {"csv": 0.60, "parquet": 0.40}


def seed(url: str, days: int, devices: int, members: int) -> None:
    t0 = datetime.combine(FIRST_DAY, datetime.min.time(), UTC)
    with psycopg.connect(url) as conn:
        conn.execute("INSERT INTO sites (site_id, timezone) VALUES (%s, 'Europe/Oslo')", (SITE,))
        conn.execute(
            "INSERT INTO devices (device_id, site_id, kind) "
            "SELECT 'bike-' || lpad(i::text, 4, '0'), %s, 'bike' FROM generate_series(1, %s) AS i",
            (SITE, devices),
        )
        conn.execute(
            "INSERT INTO participants (participant_id, site_id, sex, birth_year) "
            "SELECT ('00000000-0000-4000-8000-' || lpad(i::text, 12, '0'))::uuid, %s, "
            "CASE WHEN i %% 3 = 0 THEN 'female' ELSE 'male' END, 1950 + i %% 50 "
            "FROM generate_series(1, %s) AS i",
            (SITE, members),
        )
        # every opening hour of every day: seconds in a session and minutes with data
        conn.execute(
            "INSERT INTO device_hourly (device_id, hour, site_id, in_session_s, minutes_with_data, "
            "sessions_started) "
            "SELECT d.device_id, %s::timestamptz + day * interval '1 day' + h * interval '1 hour', %s, "
            "((hashtext(d.device_id || day || h) & 4095) * 0.87)::real, "
            "(hashtext(d.device_id || h) & 63) %% 61, 1 "
            "FROM devices d, generate_series(0, %s - 1) AS day, generate_series(6, 21) AS h "
            "WHERE d.site_id = %s",
            (t0, SITE, days, SITE),
        )
        conn.execute(
            "INSERT INTO sessions (site_id, participant_id, device_ids, started_at, ended_at, source, "
            "algorithm_version) "
            "SELECT %s, "
            "('00000000-0000-4000-8000-' || lpad((1 + (day * 8 + k + i) %% %s)::text, 12, '0'))::uuid, "
            "ARRAY[d.device_id], %s::timestamptz + day * interval '1 day' + (6 + 2 * k) * interval '1 hour' "
            "+ (i %% 50) * interval '1 minute', "
            "%s::timestamptz + day * interval '1 day' + (6 + 2 * k) * interval '1 hour' "
            "+ (i %% 50 + 35) * interval '1 minute', 'check_in', %s "
            "FROM (SELECT device_id, row_number() OVER (ORDER BY device_id) AS i FROM devices) d, "
            "generate_series(0, %s - 1) AS day, generate_series(0, 7) AS k",
            (SITE, members, t0, t0, ALGORITHM_VERSION, days),
        )
        conn.execute(
            "INSERT INTO participant_daily (participant_id, day, sessions, load, load_7d, ctl, atl, tsb, "
            "moderate_min, vigorous_min, who_min_7d, who_status, pai_as, algorithm_version) "
            "SELECT p.participant_id, %s::date + day, 1, "
            "20 + (hashtext(p.participant_id::text || day) & 127), "
            "0, 0, 0, 0, 10 + (day %% 40), day %% 17, 0, 'below', 0, %s "
            "FROM participants p, generate_series(0, %s - 1, 2) AS day",
            (FIRST_DAY, ALGORITHM_VERSION, days),
        )
        conn.execute("ANALYZE")


def params(days: int, dataset: str, fmt: str) -> SiteExportParams:
    last = FIRST_DAY + timedelta(days=days - 1)
    return SiteExportParams.canonical([dataset], fmt, FIRST_DAY, last, breakdown="sex")


def child(url: str, run: str, days: int) -> dict[str, Any]:
    """One measurement in this process: rows, seconds, peak RSS."""
    started = time.perf_counter()
    with psycopg.connect(url) as conn:
        if run == "copy":
            w = site.window("Europe/Oslo", FIRST_DAY, FIRST_DAY + timedelta(days=days - 1))
            h0, n = hour_span(w.start, w.end)
            values = {"site": SITE, "h0": h0, "h1": h0 + timedelta(hours=n)}
            query = sql.SQL("COPY ({}) TO STDOUT (FORMAT csv, HEADER)").format(site.utilisation_query())
            with conn.transaction(), conn.cursor() as cur:
                cur.execute("SET LOCAL extra_float_digits = 1")
                with cur.copy(query, values) as copy:
                    rows = -1
                    for chunk in copy:
                        rows += bytes(chunk).count(b"\n")
        else:
            dataset, fmt = RUNS[run] or ("", "")
            out = Path(tempfile.mkdtemp(prefix="vitalab-bench-site-export-"))
            try:
                spec = SiteExportSpec(
                    uuid.uuid4(), SITE, "bench", datetime.now(UTC), params(days, dataset, fmt)
                )
                result = site.run(conn, spec, out, datetime.now(UTC))
            finally:
                shutil.rmtree(out, ignore_errors=True)
            rows = result.files[0].rows or 0
    return child_figures(rows, started)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--devices", type=int, default=100)
    parser.add_argument("--members", type=int, default=400)
    parser.add_argument("--repeat", type=int, default=3, help="runs of each measurement (the best is shown)")
    parser.add_argument("--database-url", default=os.environ.get("VITALAB_BENCH_DATABASE_URL"))
    parser.add_argument("--child", choices=tuple(RUNS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.database_url, args.child, args.days)))
        return
    server = args.database_url or "postgresql://postgres@127.0.0.1:5432/postgres"
    name = f"vitalab_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = psycopg.conninfo.make_conninfo(server, dbname=name)
    try:
        migrate(url, timescale="off")
        t = time.perf_counter()
        seed(url, args.days, args.devices, args.members)
        print(
            f"seeded {args.days} days x {args.devices} devices ({args.members} members) "
            f"in {time.perf_counter() - t:.1f} s"
        )
        results: dict[str, dict[str, Any]] = {}
        for _ in range(args.repeat):  # interleaved: a burst of load elsewhere costs every run alike
            for run in RUNS:
                proc = subprocess.run(
                    [
                        sys.executable,
                        __file__,
                        "--child",
                        run,
                        "--database-url",
                        url,
                        "--days",
                        str(args.days),
                    ],
                    capture_output=True,
                    text=True,
                    check=True,
                )
                got = json.loads(proc.stdout.strip().splitlines()[-1])
                if run not in results or got["seconds"] < results[run]["seconds"]:
                    results[run] = got
        print(f"best of {args.repeat} runs each")
        copy_rate = results["copy"]["rows"] / results["copy"]["seconds"]
        print(
            f"{'run':<14} {'rows':>12} {'s':>8} {'rows/s':>12} {'of COPY':>8} {'target':>10} {'peak RSS':>10}"
        )
        for run, r in results.items():
            rate = r["rows"] / r["seconds"] if r["seconds"] else 0.0
            target = TARGETS.get(run)
            share = f"{rate / copy_rate:>8.0%}" if run in TARGETS or run == "copy" else f"{'-':>8}"
            verdict = (
                ""
                if target is None
                else f">={target:.0%} " + ("ok" if rate / copy_rate >= target else "MISSED")
            )
            print(
                f"{run:<14} {r['rows']:>12,} {r['seconds']:>8.2f} {rate:>12,.0f} {share} {verdict:>10} "
                f"{r['rss_mb']:>8.0f} MB"
            )
    finally:
        with psycopg.connect(server, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


if __name__ == "__main__":
    main()
