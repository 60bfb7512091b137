"""The thin database layer of the analytics: reads samples into NumPy, writes results. psycopg 3, sync.

Reads of the time series use binary ``COPY (SELECT ...) TO STDOUT``: every selected column is made fixed-width
and non-null (``float8`` with NaN for NULL, ``timestamptz`` as 8-byte microseconds since 2000-01-01,
``int8``), so the whole stream is one array of identical records that :func:`copy_records` turns into NumPy
with one ``np.frombuffer`` (no Python object per row). Writes go by binary COPY into a temporary staging table
and one ``INSERT ... ON CONFLICT DO UPDATE ... WHERE ... IS DISTINCT FROM`` (rows that did not change are not
rewritten, so a re-run changes nothing)."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, Final

import numpy as np
import psycopg
from numpy.typing import NDArray
from psycopg import sql
from psycopg.rows import class_row
from psycopg.types.json import Jsonb

from analytics.batch import KIND_CODE
from analytics.errors import AnalyticsJobError
from analytics.sessions import CheckIns, DeviceSamples, RrIntervals
from vitalab.db.columns import DAILY_COLUMNS, QUALITY_COLUMNS

logger = logging.getLogger(__name__)

F64 = NDArray[np.float64]
I64 = NDArray[np.int64]

PG_EPOCH_S: Final[float] = 946_684_800.0  # 2000-01-01T00:00:00Z, the origin of binary timestamptz
_SIGNATURE = b"PGCOPY\n\xff\r\n\x00"
EVENT_KINDS: Final[tuple[str, ...]] = ("state", "offline", "error")


def to_datetime(t_s: float) -> datetime:
    return datetime.fromtimestamp(t_s, UTC)


def us_to_datetime(t_us: int) -> datetime:
    """Microseconds since 2000-01-01 (the binary timestamptz) to an aware datetime, exactly."""
    return datetime(2000, 1, 1, tzinfo=UTC) + timedelta(microseconds=int(t_us))


# ---------------------------------------------------------------------------------------------- binary COPY


def copy_records(
    conn: psycopg.Connection[Any], query: sql.Composable, params: dict[str, Any], kinds: Sequence[str]
) -> NDArray[np.void]:
    """Run ``COPY (query) TO STDOUT (FORMAT BINARY)`` and return a structured array, one field per column.

    ``kinds`` gives each column's binary type: ``"f8"`` (float8), ``"i8"`` (int8) or ``"ts"`` (timestamptz,
    returned as int64 microseconds since 2000-01-01). Every column must be non-null (coalesce in the query);
    a NULL or a differently sized value raises :class:`AnalyticsJobError`."""
    stmt = sql.SQL("COPY ({}) TO STDOUT (FORMAT BINARY)").format(query)
    with conn.cursor() as cur, cur.copy(stmt, params) as copy:
        data = b"".join(bytes(chunk) for chunk in copy)
    if not data.startswith(_SIGNATURE):
        raise AnalyticsJobError("copy", "not a binary COPY stream")
    ext = int.from_bytes(data[15:19], "big")
    body = memoryview(data)[19 + ext : len(data) - 2]  # the trailer is int16 -1
    fields: list[tuple[str, str]] = [("n", ">i2")]
    for i, kind in enumerate(kinds):
        fields += [(f"l{i}", ">i4"), (f"c{i}", ">f8" if kind == "f8" else ">i8")]
    dtype = np.dtype(fields)
    if len(body) % dtype.itemsize:
        raise AnalyticsJobError("copy", "rows are not fixed width (a NULL or a wrong column type)")
    rec = np.frombuffer(body, dtype=dtype)
    if rec.size and (
        bool(np.any(rec["n"] != len(kinds)))
        or any(bool(np.any(rec[f"l{i}"] != 8)) for i in range(len(kinds)))
    ):
        raise AnalyticsJobError("copy", "unexpected field count or width (a NULL in the result)")
    return rec


def col_f8(rec: NDArray[np.void], i: int) -> F64:
    return np.asarray(rec[f"c{i}"], dtype=np.float64)


def col_i8(rec: NDArray[np.void], i: int) -> I64:
    return np.asarray(rec[f"c{i}"], dtype=np.int64)


def us_to_s(us: I64) -> F64:
    return np.asarray(us.astype(np.float64) / 1e6 + PG_EPOCH_S, dtype=np.float64)


# ---------------------------------------------------------------------------------------------- devices


@dataclass(frozen=True, slots=True)
class DeviceTable:
    ids: list[str]
    site: list[str]
    kind: NDArray[np.int8]  # index into analytics.batch.KINDS, -1 unknown

    @property
    def n(self) -> int:
        return len(self.ids)

    @property
    def is_strap(self) -> NDArray[np.bool_]:
        return np.asarray(self.kind == KIND_CODE["hr_strap"], dtype=bool)

    def site_codes(self) -> I64:
        names = sorted(set(self.site))
        code = {s: i for i, s in enumerate(names)}
        return np.array([code[s] for s in self.site], dtype=np.int64)


def site_devices(conn: psycopg.Connection[Any], site_id: str) -> DeviceTable:
    rows = conn.execute(
        "SELECT device_id, site_id, kind FROM devices WHERE site_id = %s ORDER BY device_id", (site_id,)
    ).fetchall()
    return DeviceTable(
        [r[0] for r in rows],
        [r[1] for r in rows],
        np.array([KIND_CODE.get(r[2], -1) if r[2] else -1 for r in rows], dtype=np.int8),
    )


# ---------------------------------------------------------------------------------------------- samples


@dataclass(frozen=True, slots=True)
class Loaded:
    """Samples (sorted by device code, t) with their exact times in microseconds since 2000-01-01."""

    samples: DeviceSamples
    t_us: I64


_WINDOWS = sql.SQL(
    "unnest(%(dev)s::text[], %(lo)s::float8[], %(hi)s::float8[]) "
    "WITH ORDINALITY AS w(device_id, lo, hi, code)"
)
_SAMPLE_VALUES = (
    "hr_bpm",
    "power_w",
    "speed_kmh",
    "incline_pct",
    "cadence_rpm",
    "stroke_rate_spm",
    "distance_m",
    "energy_kcal",
    "elapsed_s",
)
_SAMPLES_QUERY = sql.SQL(
    "SELECT w.code - 1, s.t, {vals} FROM {w} JOIN samples s ON s.device_id = w.device_id "
    "AND s.t >= to_timestamp(w.lo) AND s.t < to_timestamp(w.hi) ORDER BY w.code, s.t"
).format(
    vals=sql.SQL(", ").join(
        sql.SQL("coalesce(s.{}::float8, 'NaN')").format(sql.Identifier(c)) for c in _SAMPLE_VALUES
    ),
    w=_WINDOWS,
)


def _window_params(devices: DeviceTable, lo_s: F64, hi_s: F64) -> dict[str, Any]:
    return {"dev": devices.ids, "lo": [float(x) for x in lo_s], "hi": [float(x) for x in hi_s]}


def load_samples(conn: psycopg.Connection[Any], devices: DeviceTable, lo_s: F64, hi_s: F64) -> Loaded:
    """Samples of every device in ``[lo_s[d], hi_s[d])`` (device code d = index into ``devices``)."""
    rec = copy_records(conn, _SAMPLES_QUERY, _window_params(devices, lo_s, hi_s), ["i8", "ts"] + ["f8"] * 9)
    t_us = col_i8(rec, 1)
    v = [col_f8(rec, 2 + i) for i in range(len(_SAMPLE_VALUES))]
    samples = DeviceSamples(col_i8(rec, 0), us_to_s(t_us), *v)
    return Loaded(samples, t_us)


_RR_QUERY = sql.SQL(
    "SELECT w.code - 1, r.t, r.rr_ms::float8 FROM {w} JOIN rr_intervals r ON r.device_id = w.device_id "
    "AND r.t >= to_timestamp(w.lo) AND r.t < to_timestamp(w.hi) ORDER BY w.code, r.t, r.idx"
).format(w=_WINDOWS)


def load_rr(conn: psycopg.Connection[Any], devices: DeviceTable, lo_s: F64, hi_s: F64) -> RrIntervals:
    rec = copy_records(conn, _RR_QUERY, _window_params(devices, lo_s, hi_s), ["i8", "ts", "f8"])
    return RrIntervals(col_i8(rec, 0), us_to_s(col_i8(rec, 1)), col_f8(rec, 2))


@dataclass(frozen=True, slots=True)
class Events:
    device: I64
    t_s: F64
    kind: list[str]
    training: list[str | None]
    n_errors: I64


_EVENTS_QUERY = sql.SQL(
    "SELECT w.code - 1, extract(epoch FROM e.t)::float8, e.kind, e.detail->>'training', "
    "coalesce(jsonb_array_length(CASE WHEN jsonb_typeof(e.detail->'errors') = 'array' "
    "THEN e.detail->'errors' END), 0) "
    "FROM {w} CROSS JOIN LATERAL ("
    "  (SELECT t, kind, detail FROM device_events WHERE device_id = w.device_id AND kind = ANY(%(kinds)s) "
    "   AND t < to_timestamp(w.lo) ORDER BY t DESC LIMIT 1)"
    "  UNION ALL"
    "  (SELECT t, kind, detail FROM device_events WHERE device_id = w.device_id AND kind = ANY(%(kinds)s) "
    "   AND t >= to_timestamp(w.lo) AND t <= to_timestamp(w.hi))"
    ") e ORDER BY 1, 2"
).format(w=_WINDOWS)


def load_events(conn: psycopg.Connection[Any], devices: DeviceTable, lo_s: F64, hi_s: F64) -> Events:
    """Device events (state/offline/error) in the windows, plus each device's last one before its window."""
    params = _window_params(devices, lo_s, hi_s) | {"kinds": list(EVENT_KINDS)}
    rows = conn.execute(_EVENTS_QUERY, params).fetchall()
    return Events(
        np.array([r[0] for r in rows], dtype=np.int64),
        np.array([r[1] for r in rows], dtype=np.float64),
        [r[2] for r in rows],
        [r[3] for r in rows],
        np.array([r[4] for r in rows], dtype=np.int64),
    )


@dataclass(frozen=True, slots=True)
class LoadedCheckIns:
    check_ins: CheckIns
    participants: list[str]  # participant code -> uuid text


_CHECKINS_QUERY = sql.SQL(
    "SELECT w.code - 1, a.participant_id::text, extract(epoch FROM a.started_at)::float8, "
    "coalesce(extract(epoch FROM a.ended_at)::float8, 'Infinity') FROM {w} "
    "JOIN device_assignments a ON a.device_id = w.device_id AND a.started_at < to_timestamp(w.hi) "
    "AND (a.ended_at IS NULL OR a.ended_at > to_timestamp(w.lo)) ORDER BY 1, 3"
).format(w=_WINDOWS)


def load_check_ins(
    conn: psycopg.Connection[Any], devices: DeviceTable, lo_s: F64, hi_s: F64
) -> LoadedCheckIns:
    rows = conn.execute(_CHECKINS_QUERY, _window_params(devices, lo_s, hi_s)).fetchall()
    names = sorted({r[1] for r in rows})
    code = {p: i for i, p in enumerate(names)}
    ci = CheckIns(
        np.array([r[0] for r in rows], dtype=np.int64),
        np.array([code[r[1]] for r in rows], dtype=np.int64),
        np.array([r[2] for r in rows], dtype=np.float64),
        np.array([r[3] for r in rows], dtype=np.float64),
    )
    return LoadedCheckIns(ci, names)


# ---------------------------------------------------------------------------------------------- participants


@dataclass(frozen=True, slots=True)
class Participant:
    participant_id: str
    site_id: str
    timezone: str
    birth_year: int | None
    sex: str | None
    weight_kg: float | None
    hr_rest_bpm: float | None
    hr_max_bpm: float | None


def load_participants(conn: psycopg.Connection[Any], ids: Sequence[str]) -> dict[str, Participant]:
    with conn.cursor(row_factory=class_row(Participant)) as cur:
        cur.execute(
            "SELECT p.participant_id::text AS participant_id, p.site_id, s.timezone, p.birth_year::int, "
            "p.sex, "
            "p.weight_kg::float8, p.hr_rest_bpm::float8, p.hr_max_bpm::float8 "
            "FROM participants p JOIN sites s USING (site_id) WHERE p.participant_id = ANY(%s::uuid[])",
            (list(ids),),
        )
        return {p.participant_id: p for p in cur.fetchall()}


# ---------------------------------------------------------------------------------------------- sessions


SESSION_TYPED: Final[tuple[str, ...]] = (
    "duration_s",
    "hr_avg_bpm",
    "trimp",
    "moderate_min",
    "vigorous_min",
    "pai_as",
    "hr_rest_est_bpm",
    "rmssd_ms",
    "energy_kcal",
    "distance_m",
)
SESSION_COLUMNS: Final[tuple[str, ...]] = (
    "site_id",
    "participant_id",
    "device_ids",
    "started_at",
    "ended_at",
    "source",
    "summary",
    "algorithm_version",
    "hr_source",
    *SESSION_TYPED,
)
_SESSION_TYPES = ["text", "uuid", "text[]", "timestamptz", "timestamptz", "text", "jsonb", "text", "text"] + [
    "float4"
] * len(SESSION_TYPED)


def _ident_list(names: Sequence[str], prefix: str | None = None) -> sql.Composed:
    if prefix is None:
        return sql.SQL(", ").join(map(sql.Identifier, names))
    return sql.SQL(", ").join(sql.Identifier(prefix, n) for n in names)


_STAGE_SESSIONS = sql.SQL(
    "CREATE TEMP TABLE IF NOT EXISTS stage_sessions ON COMMIT DELETE ROWS AS "
    "SELECT {} FROM sessions WITH NO DATA"
).format(_ident_list(SESSION_COLUMNS))
_UPDATABLE = [c for c in SESSION_COLUMNS if c not in ("device_ids", "started_at", "algorithm_version")]
_REPLACE_SESSIONS = sql.SQL(
    """WITH gone AS (
    DELETE FROM sessions s
    WHERE s.algorithm_version = %(version)s AND s.device_ids && %(devices)s::text[]
      AND s.started_at >= %(lo)s AND s.started_at < %(hi)s
      AND NOT EXISTS (SELECT 1 FROM stage_sessions n
                      WHERE n.device_ids = s.device_ids AND n.started_at = s.started_at)
    RETURNING s.participant_id, s.started_at
), up AS (
    INSERT INTO sessions AS s ({cols}) SELECT {cols} FROM stage_sessions
    ON CONFLICT (device_ids, started_at, algorithm_version) DO UPDATE SET {sets}, computed_at = now()
    WHERE ({old}) IS DISTINCT FROM ({new})
    RETURNING s.participant_id, s.started_at
)
SELECT 'gone', participant_id::text, started_at FROM gone
UNION ALL SELECT 'up', participant_id::text, started_at FROM up"""
).format(
    cols=_ident_list(SESSION_COLUMNS),
    sets=sql.SQL(", ").join(sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(c)) for c in _UPDATABLE),
    old=_ident_list(_UPDATABLE, "s"),
    new=_ident_list(_UPDATABLE, "excluded"),
)


@dataclass(frozen=True, slots=True)
class SessionChanges:
    deleted: int
    written: int
    participants: dict[str, datetime]
    """participant id -> earliest start among its changed or deleted sessions"""


def replace_sessions(
    conn: psycopg.Connection[Any],
    rows: Sequence[tuple[Any, ...]],
    *,
    devices: Sequence[str],
    lo: datetime,
    hi: datetime,
    version: str,
) -> SessionChanges:
    """Make the stored sessions of ``devices`` that start in ``[lo, hi)`` equal to ``rows`` (columns
    :data:`SESSION_COLUMNS`): stale ones are deleted, new ones inserted, changed ones updated, the rest left
    untouched. Runs inside the caller's transaction."""
    conn.execute(_STAGE_SESSIONS)
    with conn.cursor() as cur:
        with cur.copy(
            sql.SQL("COPY stage_sessions ({}) FROM STDIN (FORMAT BINARY)").format(
                _ident_list(SESSION_COLUMNS)
            )
        ) as copy:
            copy.set_types(_SESSION_TYPES)
            for row in rows:
                copy.write_row(row)
        cur.execute(_REPLACE_SESSIONS, {"version": version, "devices": list(devices), "lo": lo, "hi": hi})
        changed = cur.fetchall()
        cur.execute("TRUNCATE stage_sessions")
    parts: dict[str, datetime] = {}
    for _, pid, started in changed:
        if pid is not None and (pid not in parts or started < parts[pid]):
            parts[pid] = started
    return SessionChanges(
        deleted=sum(1 for c in changed if c[0] == "gone"),
        written=sum(1 for c in changed if c[0] == "up"),
        participants=parts,
    )


@dataclass(frozen=True, slots=True)
class StoredSessions:
    device: I64  # code into the DeviceTable (one row per device of a session)
    participant: list[str | None]
    start_s: F64
    end_s: F64


def sessions_overlapping(
    conn: psycopg.Connection[Any], devices: DeviceTable, lo: datetime, hi: datetime, version: str
) -> StoredSessions:
    """Stored sessions touching ``[lo, hi)``, one row per (session, device of the table)."""
    rows = conn.execute(
        "SELECT d.code - 1, s.participant_id::text, extract(epoch FROM s.started_at)::float8, "
        "extract(epoch FROM s.ended_at)::float8 FROM sessions s "
        "JOIN unnest(%(dev)s::text[]) WITH ORDINALITY AS d(device_id, code) "
        "ON d.device_id = ANY(s.device_ids) "
        "WHERE s.algorithm_version = %(v)s AND s.device_ids && %(dev)s::text[] "
        "AND s.started_at < %(hi)s AND s.ended_at >= %(lo)s",
        {"dev": devices.ids, "v": version, "lo": lo, "hi": hi},
    ).fetchall()
    return StoredSessions(
        np.array([r[0] for r in rows], dtype=np.int64),
        [r[1] for r in rows],
        np.array([r[2] for r in rows], dtype=np.float64),
        np.array([r[3] for r in rows], dtype=np.float64),
    )


# ---------------------------------------------------------------------------------------------- hourly


def minutes_with_data(
    conn: psycopg.Connection[Any], devices: DeviceTable, lo: datetime, hi: datetime
) -> dict[tuple[int, datetime], int]:
    """Minutes with at least one sample per (device code, UTC hour), from the ``samples_1m`` rollup."""
    rows = conn.execute(
        "SELECT d.code - 1, date_bin('1 hour', m.bucket, TIMESTAMPTZ '2000-01-03 00:00:00+00') AS hour, "
        "count(*) FROM samples_1m m JOIN unnest(%(dev)s::text[]) WITH ORDINALITY AS d(device_id, code) "
        "ON d.device_id = m.device_id WHERE m.bucket >= %(lo)s AND m.bucket < %(hi)s GROUP BY 1, 2",
        {"dev": devices.ids, "lo": lo, "hi": hi},
    ).fetchall()
    return {(int(r[0]), r[1]): int(r[2]) for r in rows}


def replace_device_hourly(
    conn: psycopg.Connection[Any], site_id: str, lo: datetime, hi: datetime, rows: Sequence[tuple[Any, ...]]
) -> int:
    """Replace the site's device-hour rows in ``[lo, hi)`` with ``rows``
    (device_id, hour, site_id, in_session_s, minutes_with_data, sessions_started)."""
    with conn.cursor() as cur:
        cur.execute(
            "DELETE FROM device_hourly WHERE site_id = %s AND hour >= %s AND hour < %s", (site_id, lo, hi)
        )
        with cur.copy(
            "COPY device_hourly (device_id, hour, site_id, in_session_s, minutes_with_data, "
            "sessions_started) "
            "FROM STDIN (FORMAT BINARY)"
        ) as copy:
            copy.set_types(["text", "timestamptz", "text", "float4", "int2", "int2"])
            for row in rows:
                copy.write_row(row)
    return len(rows)


# ---------------------------------------------------------------------------------------------- daily


@dataclass(frozen=True, slots=True)
class SessionDays:
    """Per participant and site-local day aggregates of the stored sessions."""

    participant: list[str]
    day: list[date]
    sessions: F64
    load: F64
    moderate_min: F64
    vigorous_min: F64
    pai_as: F64
    rhr_bpm: F64
    rmssd_ms: F64


def session_days(conn: psycopg.Connection[Any], participants: Sequence[str], version: str) -> SessionDays:
    rows = conn.execute(
        "SELECT s.participant_id::text, (s.started_at AT TIME ZONE st.timezone)::date AS day, "
        "count(*)::float8, sum(s.trimp)::float8, sum(s.moderate_min)::float8, sum(s.vigorous_min)::float8, "
        "sum(s.pai_as)::float8, "
        "min(s.hr_rest_est_bpm)::float8, avg(s.rmssd_ms)::float8 "
        "FROM sessions s JOIN sites st ON st.site_id = s.site_id "
        "WHERE s.participant_id = ANY(%s::uuid[]) AND s.algorithm_version = %s GROUP BY 1, 2 ORDER BY 1, 2",
        (list(participants), version),
    ).fetchall()

    def col(i: int) -> F64:
        return np.array([math.nan if r[i] is None else r[i] for r in rows], dtype=np.float64)

    return SessionDays([r[0] for r in rows], [r[1] for r in rows], *(col(i) for i in range(2, 9)))


_DAILY_TYPES = ["uuid", "date", "int4"] + ["float4"] * 10 + ["text"] + ["float4"] * 8 + ["text"]
_DAILY_KEY = ("participant_id", "day")
_DAILY_SET = [c for c in DAILY_COLUMNS if c not in _DAILY_KEY]
_UPSERT_DAILY = sql.SQL(
    "INSERT INTO participant_daily AS d ({cols}) SELECT {cols} FROM stage_daily "
    "ON CONFLICT (participant_id, day) DO UPDATE SET {sets}, computed_at = now() "
    "WHERE ({old}) IS DISTINCT FROM ({new})"
).format(
    cols=_ident_list(DAILY_COLUMNS),
    sets=sql.SQL(", ").join(sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(c)) for c in _DAILY_SET),
    old=_ident_list(_DAILY_SET, "d"),
    new=_ident_list(_DAILY_SET, "excluded"),
)


def upsert_participant_daily(
    conn: psycopg.Connection[Any], rows: Sequence[tuple[Any, ...]], first_day: dict[str, date]
) -> int:
    """Upsert daily rows (columns :data:`DAILY_COLUMNS`) and delete each participant's rows before its first
    day (sessions that were removed); returns the number of rows inserted or changed."""
    conn.execute(
        sql.SQL(
            "CREATE TEMP TABLE IF NOT EXISTS stage_daily ON COMMIT DELETE ROWS AS "
            "SELECT {} FROM participant_daily WITH NO DATA"
        ).format(_ident_list(DAILY_COLUMNS))
    )
    with conn.cursor() as cur:
        with cur.copy(
            sql.SQL("COPY stage_daily ({}) FROM STDIN (FORMAT BINARY)").format(_ident_list(DAILY_COLUMNS))
        ) as copy:
            copy.set_types(_DAILY_TYPES)
            for row in rows:
                copy.write_row(row)
        cur.execute(_UPSERT_DAILY)
        changed = max(cur.rowcount, 0)
        cur.execute("TRUNCATE stage_daily")
        if first_day:
            cur.execute(
                "DELETE FROM participant_daily d USING unnest(%s::uuid[], %s::date[]) AS f(pid, first) "
                "WHERE d.participant_id = f.pid AND d.day < f.first",
                (list(first_day), list(first_day.values())),
            )
            changed += max(cur.rowcount, 0)
    return changed


def delete_participant_daily(conn: psycopg.Connection[Any], participants: Sequence[str]) -> int:
    cur = conn.execute(
        "DELETE FROM participant_daily WHERE participant_id = ANY(%s::uuid[])", (list(participants),)
    )
    return max(cur.rowcount, 0)


# ---------------------------------------------------------------------------------------------- quality


@dataclass(frozen=True, slots=True)
class QualityRows:
    """Stored rows of device-days, CSR over ``keys`` (device id, UTC day), time order inside."""

    keys: list[tuple[str, date]]
    offsets: I64
    t_s: F64
    received_s: F64
    hr_valid: NDArray[np.bool_]
    seq: I64  # the message's sequence number, -1 unknown


_QUALITY_QUERY = sql.SQL(
    "SELECT k.code - 1, s.t, s.received_at, "
    "CASE WHEN s.hr_bpm BETWEEN 30 AND 240 THEN 1 ELSE 0 END::int8, coalesce(s.seq, -1) "
    "FROM unnest(%(dev)s::text[], %(day)s::date[]) WITH ORDINALITY AS k(device_id, day, code) "
    "JOIN samples s ON s.device_id = k.device_id AND s.t >= k.day::timestamp AT TIME ZONE 'UTC' "
    "AND s.t < (k.day + 1)::timestamp AT TIME ZONE 'UTC' ORDER BY k.code, s.t"
)


def load_quality_rows(conn: psycopg.Connection[Any], keys: Sequence[tuple[str, date]]) -> QualityRows:
    rec = copy_records(
        conn,
        _QUALITY_QUERY,
        {"dev": [k[0] for k in keys], "day": [k[1] for k in keys]},
        ["i8", "ts", "ts", "i8", "i8"],
    )
    code = col_i8(rec, 0)
    counts = np.bincount(code, minlength=len(keys)) if code.size else np.zeros(len(keys), dtype=np.int64)
    offsets = np.concatenate(([0], np.cumsum(counts))).astype(np.int64)
    return QualityRows(
        list(keys),
        offsets,
        us_to_s(col_i8(rec, 1)),
        us_to_s(col_i8(rec, 2)),
        col_i8(rec, 3).astype(bool),
        col_i8(rec, 4),
    )


_QUALITY_TYPES = (
    ["text", "date", "text", "int8", "int8", "int8", "int8", "int8"]
    + ["float4"] * 8
    + ["int8", "int4", "float4", "float4"]
)


def upsert_device_quality(conn: psycopg.Connection[Any], rows: Sequence[tuple[Any, ...]]) -> int:
    """Upsert quality rows; ``samples_received``/``duplicates`` are NULL in ``rows`` and filled in from
    ``ingest_device_stats`` (NULL when the device-day did not come through the ingester);
    duplicates = received - stored."""
    conn.execute(
        sql.SQL(
            "CREATE TEMP TABLE IF NOT EXISTS stage_quality ON COMMIT DELETE ROWS AS "
            "SELECT {} FROM device_quality_daily WITH NO DATA"
        ).format(_ident_list(QUALITY_COLUMNS))
    )
    keep = [c for c in QUALITY_COLUMNS if c not in ("device_id", "day")]
    with conn.cursor() as cur:
        with cur.copy(
            sql.SQL("COPY stage_quality ({}) FROM STDIN (FORMAT BINARY)").format(_ident_list(QUALITY_COLUMNS))
        ) as copy:
            copy.set_types(_QUALITY_TYPES)
            for row in rows:
                copy.write_row(row)
        cur.execute(
            "UPDATE stage_quality q SET samples_received = i.samples_received, "
            "duplicates = i.samples_received - q.samples FROM ingest_device_stats i "
            "WHERE i.device_id = q.device_id AND i.day = q.day"
        )
        cur.execute(
            sql.SQL(
                "INSERT INTO device_quality_daily AS d ({cols}) SELECT {cols} FROM stage_quality "
                "ON CONFLICT (device_id, day) DO UPDATE SET {sets}, computed_at = now() "
                "WHERE ({old}) IS DISTINCT FROM ({new})"
            ).format(
                cols=_ident_list(QUALITY_COLUMNS),
                sets=sql.SQL(", ").join(
                    sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(c)) for c in keep
                ),
                old=_ident_list(keep, "d"),
                new=_ident_list(keep, "excluded"),
            )
        )
        changed = max(cur.rowcount, 0)
        cur.execute("TRUNCATE stage_quality")
    return changed


# ---------------------------------------------------------------------------------------------- dirty


@dataclass(frozen=True, slots=True)
class Received:
    """What the ingester received for one device and UTC day since the last run (from ``ingest_batches``).
    Times are epoch seconds (read as numbers, so that no stored value can fail the conversion to a Python
    datetime: PostgreSQL's ``infinity`` is ``inf``); ``day`` is None where it is not a finite date."""

    device_id: str
    day: date | None
    samples: int
    t_from_s: float
    t_to_s: float


_FOLD_BATCHES = """
WITH b AS (
    DELETE FROM ingest_batches RETURNING device_id, day, received, t_from, t_to
), u AS (
    SELECT unnest(device_id) AS device_id, unnest(day) AS day, unnest(received) AS n,
           unnest(t_from) AS t_from, unnest(t_to) AS t_to
    FROM b
), agg AS (
    SELECT device_id, day, sum(n)::int8 AS samples, min(t_from) AS t_from, max(t_to) AS t_to
    FROM u GROUP BY 1, 2
), up AS (
    INSERT INTO ingest_device_stats AS s (device_id, day, samples_received)
    SELECT device_id, day, samples FROM agg ORDER BY 1, 2
    ON CONFLICT (device_id, day) DO UPDATE
    SET samples_received = s.samples_received + EXCLUDED.samples_received, updated_at = now()
)
SELECT device_id, CASE WHEN isfinite(day) THEN day END AS day, samples,
       extract(epoch FROM t_from)::float8 AS t_from_s, extract(epoch FROM t_to)::float8 AS t_to_s
FROM agg ORDER BY 1, 2
"""


def fold_ingest_batches(conn: psycopg.Connection[Any]) -> list[Received]:
    """Consume the ``ingest_batches`` rows visible now (inside the caller's transaction): add their counts to
    ``ingest_device_stats`` and return what they cover. Rows that commit later are not seen and stay."""
    with conn.cursor(row_factory=class_row(Received)) as cur:
        cur.execute(_FOLD_BATCHES)
        return cur.fetchall()


@dataclass(frozen=True, slots=True)
class DirtyNote:
    """A queued range (epoch seconds, like :class:`Received`)."""

    id: int
    device_id: str
    t_from_s: float
    t_to_s: float


def dirty_notes(conn: psycopg.Connection[Any]) -> list[DirtyNote]:
    with conn.cursor(row_factory=class_row(DirtyNote)) as cur:
        cur.execute(
            "SELECT id, device_id, extract(epoch FROM t_from)::float8 AS t_from_s, "
            "extract(epoch FROM t_to)::float8 AS t_to_s FROM analytics_dirty ORDER BY id"
        )
        return cur.fetchall()


def delete_notes(conn: psycopg.Connection[Any], notes: Sequence[DirtyNote]) -> None:
    """Delete the queue rows a run has dealt with (by id: rows queued meanwhile stay)."""
    if notes:
        conn.execute("DELETE FROM analytics_dirty WHERE id = ANY(%s)", ([n.id for n in notes],))


def note_dirty(
    conn: psycopg.Connection[Any], rows: Sequence[tuple[str, datetime, datetime]], reason: str
) -> None:
    """Queue ranges to look at again (open sessions)."""
    if rows:
        conn.cursor().executemany(
            "INSERT INTO analytics_dirty (device_id, t_from, t_to, reason) VALUES (%s, %s, %s, %s)",
            [(d, a, b, reason) for d, a, b in rows],
        )


# ---------------------------------------------------------------------------------------------- job state


@dataclass(frozen=True, slots=True)
class JobState:
    algorithm_version: str | None
    daily_through: date | None


def job_state(conn: psycopg.Connection[Any], job: str) -> JobState | None:
    with conn.cursor(row_factory=class_row(JobState)) as cur:
        cur.execute("SELECT algorithm_version, daily_through FROM analytics_state WHERE job = %s", (job,))
        return cur.fetchone()


def save_job_state(
    conn: psycopg.Connection[Any], job: str, version: str, daily_through: date, now: datetime
) -> None:
    conn.execute(
        "INSERT INTO analytics_state (job, algorithm_version, daily_through, last_run_at) "
        "VALUES (%s, %s, %s, %s) "
        "ON CONFLICT (job) DO UPDATE SET algorithm_version = EXCLUDED.algorithm_version, "
        "daily_through = EXCLUDED.daily_through, last_run_at = EXCLUDED.last_run_at",
        (job, version, daily_through, now),
    )


def save_job_result(conn: psycopg.Connection[Any], job: str, seconds: float, result: dict[str, Any]) -> None:
    conn.execute(
        "UPDATE analytics_state SET last_run_s = %s, last_result = %s WHERE job = %s",
        (seconds, Jsonb(result), job),
    )


def device_sites(conn: psycopg.Connection[Any]) -> dict[str, str]:
    """device id -> site id of every registered device."""
    return {r[0]: r[1] for r in conn.execute("SELECT device_id, site_id FROM devices").fetchall()}


def received_device_days(conn: psycopg.Connection[Any], first: date, before: date) -> list[tuple[str, date]]:
    """(device, UTC day) with samples received through the ingester in ``[first, before)``."""
    rows = conn.execute(
        "SELECT device_id, day FROM ingest_device_stats WHERE day >= %s AND day < %s", (first, before)
    ).fetchall()
    return [(r[0], r[1]) for r in rows]


def participants_with_daily_rows(conn: psycopg.Connection[Any]) -> list[str]:
    return [
        r[0] for r in conn.execute("SELECT DISTINCT participant_id::text FROM participant_daily").fetchall()
    ]


def participants_with_results(conn: psycopg.Connection[Any]) -> list[str]:
    """Participants with a stored session or daily row."""
    return [
        r[0]
        for r in conn.execute(
            "SELECT DISTINCT participant_id::text FROM sessions WHERE participant_id IS NOT NULL "
            "UNION SELECT DISTINCT participant_id::text FROM participant_daily"
        ).fetchall()
    ]
