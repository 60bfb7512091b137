"""Benchmark: export N samples of one study in every format, beside the bare COPY of the same query.

    python bench/bench_export.py [--rows 1000000] [--full | --sizes 1000000,3000000] [--formats copy,parquet]
                                 [--database-url postgresql://...]

Seeds a fresh database (dropped afterwards) with one study at one site: ``--participants`` participants
(default 50), each wearing their own strap (checked out for the whole period) that samples at 1 Hz, in
one-hour sessions, all consenting to every scope. Then, each in its own process (peak RSS is the export's):

- ``copy``: ``COPY (the samples dataset query) TO STDOUT (FORMAT csv)`` read and discarded: the rate
  PostgreSQL produces the consented rows at (the limit every format is held against);
- ``csv``, ``parquet``, ``omh``: the samples dataset written by the export engine (api/exports/engine.py) to a
  temporary directory (rows counted without the extra counting pass that gives the API its progress total);
- ``fhir-r4``: the per-second SampledData series of every session (samples covered per second).

Prints rows/s and the share of the COPY rate (targets: CSV >= 60 %, Parquet >= 40 %; FHIR and Open mHealth
as fast as their JSON allows) and the peak RSS of each. ``--full`` runs at 1 M and then at 10 M rows and
prints the RSS growth between the two (target < 50 MB); ``--sizes`` runs at the sizes given (the growth is
printed between the first and the last, and extrapolated linearly to 9 M rows next to the target when they
are not 1 M and 10 M: a cheaper check on a loaded machine). ``--formats`` limits the run to some formats
(``copy`` always runs: it is the reference).
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
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from common import child_figures
from psycopg import sql

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analytics.version import ALGORITHM_VERSION
from api.exports import engine
from api.exports.datasets import SAMPLES, bind
from api.exports.engine import ExportParams, ExportSpec
from api.exports.pseudonyms import pads
from vitalab.db import migrate

T0 = datetime(2026, 1, 5, tzinfo=UTC)
KEY = bytes(range(32))
SCOPES = ["derived_metrics", "raw_samples", "rr_intervals"]
FORMATS = ("copy", "csv", "parquet", "omh", "fhir-r4")
TARGETS = {"csv": 0.60, "parquet": 0.40}


def seed(url: str, rows: int, participants: int, start_row: int = 0) -> None:
    """Samples ``start_row .. rows`` (1 Hz, straps of ``participants`` people in turn by the hour)."""
    per = rows // participants
    with psycopg.connect(url) as conn:
        if start_row == 0:
            conn.execute("INSERT INTO sites (site_id) VALUES ('gym')")
            conn.execute(
                "INSERT INTO studies (study_id, title, starts_on, scopes, status) "
                "VALUES ('bench', 'B', '2025-01-01', %s, 'recruiting')",
                (SCOPES,),
            )
            conn.execute("INSERT INTO study_sites VALUES ('bench', 'gym')")
            conn.execute("INSERT INTO study_keys VALUES ('bench', %s, %s)", (KEY, T0))
            for i in range(participants):
                pid = uuid.UUID(int=i + 1)
                strap = f"strap-{i:04d}"
                conn.execute(
                    "INSERT INTO devices (device_id, site_id, kind) VALUES (%s, 'gym', 'hr_strap')", (strap,)
                )
                conn.execute("INSERT INTO participants (participant_id, site_id) VALUES (%s, 'gym')", (pid,))
                conn.execute(
                    "INSERT INTO device_assignments (device_id, participant_id, started_at) "
                    "VALUES (%s, %s, %s)",
                    (strap, pid, T0 - timedelta(days=1)),
                )
                conn.execute(
                    "INSERT INTO study_enrolments (study_id, participant_id, enrolled_at) "
                    "VALUES ('bench', %s, %s)",
                    (pid, T0 - timedelta(days=2)),
                )
                conn.execute(
                    "INSERT INTO study_consents (study_id, participant_id, consent_version, scopes, "
                    "given_at, "
                    "recorded_at, recorded_by) VALUES ('bench', %s, 'v1', %s, %s, %s, 'bench')",
                    (pid, SCOPES, T0 - timedelta(days=2), T0 - timedelta(days=2)),
                )
        first, last = start_row // participants, per
        with conn.cursor() as cur:
            for i in range(participants):
                strap = f"strap-{i:04d}"
                conn.execute(
                    "INSERT INTO samples (device_id, t, site_id, hr_bpm, seq) "
                    "SELECT %s, %s + k * interval '1 second', 'gym', 100 + (k %% 70) + 0.5, k "
                    "FROM generate_series(%s::bigint, %s::bigint - 1) AS k",
                    (strap, T0, first, last),
                )
                hours = range(first // 3600, (last + 3599) // 3600)
                cur.executemany(
                    "INSERT INTO sessions (site_id, participant_id, device_ids, started_at, ended_at, "
                    "source, "
                    "algorithm_version, duration_s) VALUES ('gym', %s, %s, %s, %s, 'check_in', %s, 3599) "
                    "ON CONFLICT DO NOTHING",
                    [
                        (
                            uuid.UUID(int=i + 1),
                            [strap],
                            T0 + timedelta(hours=h),
                            T0 + timedelta(hours=h, seconds=3599),
                            ALGORITHM_VERSION,
                        )
                        for h in hours
                    ],
                )
        conn.execute("ANALYZE")


def child(url: str, fmt: str) -> dict[str, Any]:
    """One measurement in this process: rows, seconds, peak RSS."""
    snapshot = T0 + timedelta(days=3650)
    started = time.perf_counter()
    with psycopg.connect(url) as conn:
        if fmt == "copy":
            p = pads(KEY)
            values = bind(
                study_id="bench",
                scope="raw_samples",
                snapshot=snapshot,
                since=None,
                until=None,
                subset=None,
                inner=p.inner,
                outer=p.outer,
                algorithm_version=ALGORITHM_VERSION,
            )
            query = sql.SQL("COPY ({}) TO STDOUT (FORMAT csv, HEADER)").format(SAMPLES.query())
            with conn.cursor() as cur, cur.copy(query, values) as copy:
                n = -1
                for chunk in copy:
                    n += bytes(chunk).count(b"\n")
            rows = n
        else:
            out = Path(tempfile.mkdtemp(prefix="vitalab-bench-export-"))
            try:
                spec = ExportSpec(
                    uuid.uuid4(),
                    "bench",
                    "bench",
                    snapshot,
                    ExportParams.canonical(["samples"], fmt),  # type: ignore[arg-type]
                )
                result = engine.run(conn, spec, out, snapshot, count_rows=False)
            finally:
                shutil.rmtree(out, ignore_errors=True)
            rows = result.files[0].rows or 0
    return child_figures(rows, started)


def measure(url: str, formats: tuple[str, ...] = FORMATS) -> dict[str, dict[str, Any]]:
    results = {}
    for fmt in formats:
        proc = subprocess.run(
            [sys.executable, __file__, "--child", fmt, "--database-url", url],
            capture_output=True,
            text=True,
            check=True,
        )
        results[fmt] = json.loads(proc.stdout.strip().splitlines()[-1])
    return results


def report(label: str, samples: int, results: dict[str, dict[str, Any]]) -> None:
    copy_rate = results["copy"]["rows"] / results["copy"]["seconds"]
    print(f"\n{label}: {samples:,} samples in the database")
    print(f"{'format':<8} {'rows':>12} {'s':>8} {'rows/s':>12} {'of COPY':>8} {'target':>8} {'peak RSS':>10}")
    for fmt, r in results.items():
        rate = r["rows"] / r["seconds"] if r["seconds"] else 0.0
        share = rate / copy_rate if copy_rate else 0.0
        target = TARGETS.get(fmt)
        verdict = "" if target is None else (f">={target:.0%} " + ("ok" if share >= target else "MISSED"))
        unit = "sessions" if fmt == "fhir-r4" else "rows"
        print(
            f"{fmt:<8} {r['rows']:>12,} {r['seconds']:>8.2f} {rate:>12,.0f} {share:>8.0%} {verdict:>8} "
            f"{r['rss_mb']:>8.0f} MB" + (f"  ({unit})" if fmt == "fhir-r4" else "")
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--participants", type=int, default=50)
    parser.add_argument("--full", action="store_true", help="1 M then 10 M rows, with the RSS growth")
    parser.add_argument("--sizes", help="comma-separated row counts, ascending (e.g. 1000000,3000000)")
    parser.add_argument("--formats", help=f"comma-separated, of {', '.join(FORMATS)} (default: all)")
    parser.add_argument("--database-url", default=os.environ.get("VITALAB_BENCH_DATABASE_URL"))
    parser.add_argument("--child", choices=FORMATS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.database_url, args.child)))
        return
    server = args.database_url or "postgresql://postgres@127.0.0.1:5432/postgres"
    name = f"vitalab_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = psycopg.conninfo.make_conninfo(server, dbname=name)
    try:
        migrate(url, timescale="off")
        if args.full:
            sizes = [1_000_000, 10_000_000]
        elif args.sizes:
            sizes = sorted(int(s) for s in args.sizes.split(","))
        else:
            sizes = [args.rows]
        formats: tuple[str, ...] = FORMATS
        if args.formats:
            wanted = set(args.formats.split(",")) | {"copy"}
            unknown = wanted - set(FORMATS)
            if unknown:
                parser.error(f"unknown format(s): {', '.join(sorted(unknown))}")
            formats = tuple(f for f in FORMATS if f in wanted)
        done, by_size = 0, {}
        for size in sizes:
            t = time.perf_counter()
            seed(url, size, args.participants, done)
            print(f"seeded {size - done:,} samples in {time.perf_counter() - t:.1f} s")
            done = size
            by_size[size] = measure(url, formats)
            report(f"{size:,} rows", size, by_size[size])
        if len(sizes) >= 2:
            first, last = sizes[0], sizes[-1]
            scale = 9_000_000 / (last - first)
            exact = (first, last) == (1_000_000, 10_000_000)
            what = "" if exact else " (-> extrapolated linearly to 1 M .. 10 M rows)"
            print(f"\npeak RSS growth from {first:,} to {last:,} rows{what}, target < 50 MB:")
            for fmt in formats:
                growth = by_size[last][fmt]["rss_mb"] - by_size[first][fmt]["rss_mb"]
                scaled = growth * scale
                shown = f"{growth:+7.1f} MB" + ("" if exact else f" -> {scaled:+7.1f} MB")
                print(f"  {fmt:<8} {shown} {'ok' if scaled < 50 else 'MISSED'}")
    finally:
        with psycopg.connect(server, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


if __name__ == "__main__":
    main()
