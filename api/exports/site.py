"""Site exports for gym operators: a site's aggregates over a range of its local days, as CSV or Parquet, with
``manifest.json`` and ``data_dictionary.csv`` like the study exports (:mod:`api.exports.engine`), run by the
same job queue and worker (:mod:`api.exports.jobs`, jobs of kind ``site``).

Datasets (definitions in :mod:`analytics.site`; the figures are those of the site report endpoints, computed
by the same code):

* ``utilisation``: one row per device of the site and UTC hour of the range (hours without activity are 0),
  streamed with ``COPY (query) TO STDOUT`` from ``device_hourly``, exactly what ``GET .../utilisation``
  returns per device and hour.
* ``occupancy``: one row per slot (``slot_min`` minutes, whole UTC slots) of the range: machines in a session
  (time-weighted mean) and distinct participants, with the slot's local start, weekday and slot of the day;
  ``GET .../occupancy`` returns the mean of these per (weekday, slot of the day). Computed by
  :func:`api.services.sites.occupancy_series` a block of :data:`OCCUPANCY_BLOCK_SLOTS` slots at a time.
* ``vitality``: one row per ISO week (and group of the ``breakdown``) with small groups suppressed with the
  ``k`` of the request (never below the configured minimum, applied by the API before the job is queued):
  the cells of ``GET .../vitality`` computed by :func:`api.services.sites.vitality_cells`, one week at a
  time, from the same query (:data:`api.queries.sites.MEMBER_WEEKS`). A suppressed cell has every figure
  empty, its member count too: an export never shows a cell the API suppresses.

The range is ``[since, until]`` in the site's local days: from local midnight of ``since`` to local midnight
after ``until``. Everything is read in one ``REPEATABLE READ READ ONLY`` transaction with the session's time
zone, date style and float output pinned; rows come in a total order; the same export of unchanged data is
the same bytes. Memory is flat in the number of hours and slots (utilisation streams; occupancy goes by
blocks); vitality's input streams through a server-side cursor and its cells (a few per week) are computed
before the files are written, so that every dataset's row count is known first.
"""

from __future__ import annotations

import csv
import io
import itertools
import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any, Final, Literal, get_args
from uuid import UUID
from zoneinfo import ZoneInfo

import msgspec
import psycopg
from psycopg import sql
from psycopg.rows import class_row

from analytics.site import K_ANONYMITY
from analytics.version import ALGORITHM_VERSION
from api.exports.datasets import Column, Kind
from api.exports.engine import DICTIONARY, MANIFEST, ExportError, NoProgress, Progress, Result, file_name
from api.exports.files import Chunk, FileResult, HashingFile
from api.exports.writers import write_csv, write_parquet
from api.models import VitalityCell
from api.queries import sites as site_q
from api.services import sites as reports

logger = logging.getLogger(__name__)

SiteDataset = Literal["utilisation", "occupancy", "vitality"]
SiteFormat = Literal["csv", "parquet"]
SITE_DATASETS: Final[tuple[SiteDataset, ...]] = get_args(SiteDataset)
SITE_FORMATS: Final[tuple[SiteFormat, ...]] = get_args(SiteFormat)
BREAKDOWNS: Final[tuple[reports.Breakdown, ...]] = get_args(reports.Breakdown)
SITE_EXPORT_SCHEMA: Final = "vitalab-site-export/1"
"""Version of the layout of a site export (file names, columns, manifest); bump when any of them changes."""
OCCUPANCY_BLOCK_SLOTS: Final = 7 * 96
"""Slots of occupancy computed at once (a week of 15-minute slots)."""
CSV_ROWS_PER_CHUNK: Final = 4096
SLOT_MINUTES: Final = (5, 10, 15, 20, 30, 60)
SUPPRESSION_RULE: Final = (
    "a vitality cell of fewer than k members is suppressed (every figure empty), and so are the smallest "
    "other cells of its week until the suppressed ones hold at least k members together; the week's total is "
    "group 'all' (analytics/site.py)"
)


@dataclass(frozen=True, slots=True)
class SiteExportParams:
    """What an operator asked for; ``as_json`` is stored with the job and copied into the manifest. ``k`` is
    the threshold applied (the API has raised it to the configured minimum)."""

    datasets: tuple[SiteDataset, ...]
    format: SiteFormat
    since: date
    until: date
    gzip: bool = False
    slot_min: int = 15
    breakdown: reports.Breakdown = "none"
    k: int = K_ANONYMITY

    def __post_init__(self) -> None:
        if self.format not in SITE_FORMATS:
            raise ExportError(f"unknown format {self.format!r} (one of {', '.join(SITE_FORMATS)})")
        if not self.datasets:
            raise ExportError("no dataset asked for")
        if self.gzip and self.format == "parquet":
            raise ExportError("parquet files are compressed inside (zstd); gzip applies to csv")
        if self.until < self.since:
            raise ExportError("the range runs backwards: since (the first day, --from) is after until (--to)")
        if self.slot_min not in SLOT_MINUTES:
            raise ExportError(f"slot_min must divide an hour ({', '.join(map(str, SLOT_MINUTES))})")
        if self.breakdown not in BREAKDOWNS:
            raise ExportError(f"unknown breakdown {self.breakdown!r} (one of {', '.join(BREAKDOWNS)})")
        if self.k < 2:
            raise ExportError("k must be at least 2")

    @classmethod
    def canonical(
        cls,
        datasets: Sequence[str],
        format: str,
        since: date,
        until: date,
        *,
        gzip: bool = False,
        slot_min: int = 15,
        breakdown: str = "none",
        k: int = K_ANONYMITY,
    ) -> SiteExportParams:
        """Parameters in one canonical form: datasets in the order of :data:`SITE_DATASETS`."""
        unknown = sorted(set(datasets) - set(SITE_DATASETS))
        if unknown:
            raise ExportError(f"unknown dataset(s) {', '.join(unknown)} (known: {', '.join(SITE_DATASETS)})")
        return cls(
            tuple(d for d in SITE_DATASETS if d in set(datasets)),
            format,  # type: ignore[arg-type]  # checked in __post_init__
            since,
            until,
            gzip,
            slot_min,
            breakdown,  # type: ignore[arg-type]  # checked in __post_init__
            k,
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "datasets": list(self.datasets),
            "format": self.format,
            "since": self.since.isoformat(),
            "until": self.until.isoformat(),
            "gzip": self.gzip,
            "slot_min": self.slot_min,
            "breakdown": self.breakdown,
            "k": self.k,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SiteExportParams:
        return cls.canonical(
            data["datasets"],
            data["format"],
            date.fromisoformat(data["since"]),
            date.fromisoformat(data["until"]),
            gzip=bool(data.get("gzip", False)),
            slot_min=int(data.get("slot_min", 15)),
            breakdown=str(data.get("breakdown", "none")),
            k=int(data.get("k", K_ANONYMITY)),
        )


@dataclass(frozen=True, slots=True)
class SiteExportSpec:
    export_id: UUID
    site_id: str
    requested_by: str
    requested_at: datetime
    params: SiteExportParams


def _c(name: str, kind: Kind, unit: str | None, meaning: str, expr: str = "") -> Column:
    return Column(name, kind, unit, meaning, expr)


_IN_SESSION: Final = "coalesce(x.in_session_s::text::float8, 0)"
"""The stored ``real`` as the API reads it: its shortest text as a double (3078.164, not 3078.1640625)."""
UTILISATION_COLUMNS: Final = (
    _c("hour", "timestamp", "UTC", "start of the UTC hour", "h.hour"),
    _c("device_id", "string", None, "the device", "d.device_id"),
    _c("device_kind", "string", None, "kind of device (empty: not known)", "d.kind"),
    _c(
        "in_session_s",
        "float64",
        "s",
        "seconds of the hour the device was in a session (first to last active sample)",
        _IN_SESSION,
    ),
    _c("utilisation", "float64", None, "in_session_s / 3600", f"{_IN_SESSION} / 3600"),
    _c(
        "minutes_with_data",
        "int32",
        "min",
        "minutes of the hour with any sample of the device",
        "coalesce(x.minutes_with_data, 0)::int",
    ),
)
OCCUPANCY_COLUMNS: Final = (
    _c("slot_start", "timestamp", "UTC", "start of the slot"),
    _c("local_start", "string", None, "start of the slot in the site's time (ISO 8601 with its offset)"),
    _c("weekday", "int16", None, "local weekday of the slot's start (0 = Monday)"),
    _c("slot_of_day", "int16", None, "slot of the local day (0 = the slot starting at midnight)"),
    _c("machines_in_use", "float64", None, "machines in a session, time-weighted mean over the slot"),
    _c("participants", "int32", None, "distinct known participants with a session overlapping the slot"),
)
VITALITY_COLUMNS: Final = (
    _c("week", "date", None, "ISO week (its Monday)"),
    _c("group", "string", None, "'all' (the week's members), or the group of the breakdown"),
    _c(
        "suppressed", "bool", None, "true: fewer than k members (or complementary suppression): figures empty"
    ),
    _c("members", "int32", None, "members with at least one session that week"),
    _c("sessions_per_member", "float64", None, "sessions / members"),
    _c("median_load", "float64", "AU", "median weekly load (sum of session TRIMP)"),
    _c("median_mvpa_min", "float64", "min", "median moderate + vigorous minutes"),
    _c("mean_who_min", "float64", "min", "mean WHO moderate-equivalent minutes (moderate + 2 x vigorous)"),
    _c("who_share", "float64", None, "share of members with >= 150 moderate-equivalent minutes"),
)
COLUMNS: Final[dict[SiteDataset, tuple[Column, ...]]] = {
    "utilisation": UTILISATION_COLUMNS,
    "occupancy": OCCUPANCY_COLUMNS,
    "vitality": VITALITY_COLUMNS,
}
MEANING: Final[dict[SiteDataset, str]] = {
    "utilisation": "one row per device and UTC hour",
    "occupancy": "one row per slot",
    "vitality": "one row per ISO week and group, small groups suppressed",
}

_UTILISATION = """
SELECT {cols}
FROM devices d
CROSS JOIN generate_series(%(h0)s::timestamptz, %(h1)s::timestamptz - interval '1 hour', interval '1 hour')
    AS h(hour)
LEFT JOIN device_hourly x ON x.device_id = d.device_id AND x.hour = h.hour AND x.site_id = %(site)s
WHERE d.site_id = %(site)s
ORDER BY d.device_id, h.hour"""


def utilisation_query() -> sql.Composed:
    """The utilisation rows of devices and hours ``[h0, h1)`` of site ``site`` (what the API returns)."""
    return sql.SQL(_UTILISATION).format(cols=sql.SQL(", ").join(c.select() for c in UTILISATION_COLUMNS))


@dataclass(frozen=True, slots=True)
class Window:
    """The range in UTC, ``[start, end)``: local midnight of ``since`` to local midnight after ``until``."""

    timezone: str
    start: datetime
    end: datetime


def window(timezone: str, since: date, until: date) -> Window:
    tz = ZoneInfo(timezone)
    start = datetime.combine(since, time(), tz).astimezone(UTC)
    end = datetime.combine(until + timedelta(days=1), time(), tz).astimezone(UTC)
    return Window(timezone, start, end)


def _iso(t: datetime) -> str:
    return t.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _text(v: object) -> str:
    """A value as CSV text (the forms PostgreSQL's COPY writes and pyarrow's CSV reader reads)."""
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return repr(v)  # the shortest text that reads back as the same double
    if isinstance(v, datetime):
        return v.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    if isinstance(v, date):
        return v.isoformat()
    return str(v)


def csv_chunks(columns: Sequence[Column], rows: Iterable[Sequence[object]]) -> Iterator[bytes]:
    """Rows computed in Python as CSV (header line first), in blocks of :data:`CSV_ROWS_PER_CHUNK` rows."""
    buf = io.StringIO()
    out = csv.writer(buf, lineterminator="\n")
    out.writerow([c.name for c in columns])
    for n, row in enumerate(rows, 1):
        out.writerow([_text(v) for v in row])
        if n % CSV_ROWS_PER_CHUNK == 0:
            yield buf.getvalue().encode()
            buf.seek(0)
            buf.truncate()
    yield buf.getvalue().encode()


def _copy(conn: psycopg.Connection, query: sql.Composable, values: Mapping[str, object]) -> Iterator[Chunk]:
    with (
        conn.cursor() as cur,
        cur.copy(sql.SQL("COPY ({}) TO STDOUT (FORMAT csv, HEADER)").format(query), values) as copy,
    ):
        yield from copy


def _devices(conn: psycopg.Connection, site_id: str) -> list[site_q.SiteDevice]:
    with conn.cursor(row_factory=class_row(site_q.SiteDevice)) as cur:
        return cur.execute(site_q.DEVICES, (site_id,)).fetchall()


def occupancy_rows(
    conn: psycopg.Connection, site_id: str, w: Window, slot_min: int, devices: Sequence[site_q.SiteDevice]
) -> Iterator[tuple[object, ...]]:
    """The occupancy rows of the window, a block of slots at a time."""
    tz = ZoneInfo(w.timezone)
    edges = reports.slot_edges(w.start, w.end, slot_min)
    for i in range(0, len(edges) - 1, OCCUPANCY_BLOCK_SLOTS):
        block = edges[i : i + OCCUPANCY_BLOCK_SLOTS + 1]
        t0 = datetime.fromtimestamp(float(block[0]), UTC)
        t1 = datetime.fromtimestamp(float(block[-1]), UTC)
        with conn.cursor(row_factory=class_row(site_q.SessionSpan)) as cur:
            spans = cur.execute(site_q.SESSIONS_OVERLAPPING, (site_id, ALGORITHM_VERSION, t1, t0)).fetchall()
        occ = reports.occupancy_series(devices, spans, block)
        local, weekday, slot = reports.local_slots(block, tz, slot_min)
        for j, start in enumerate(local):
            yield (
                start,
                start.isoformat(),
                int(weekday[j]),
                int(slot[j]),
                float(occ.machines_in_use[j]),
                int(occ.participants[j]),
            )


def vitality_cells(conn: psycopg.Connection, site_id: str, params: SiteExportParams) -> list[VitalityCell]:
    """The vitality cells of the range; its member-weeks read through a server-side cursor, a week at a
    time."""
    cells: list[VitalityCell] = []
    with conn.cursor(name="vitalab_site_export", row_factory=class_row(site_q.MemberWeek)) as cur:
        cur.itersize = 5000
        cur.execute(site_q.MEMBER_WEEKS, (site_id, params.since, params.until))
        for _, week in itertools.groupby(cur, key=lambda r: r.week):
            cells += reports.vitality_cells(list(week), params.breakdown, params.k)
    return cells


def _vitality_rows(cells: Iterable[VitalityCell]) -> Iterator[tuple[object, ...]]:
    for c in cells:
        yield (
            c.week,
            c.group,
            c.suppressed,
            c.members,
            c.sessions_per_member,
            c.median_load,
            c.median_mvpa_min,
            c.mean_who_min,
            c.who_share,
        )


def run(
    conn: psycopg.Connection,
    spec: SiteExportSpec,
    out_dir: Path,
    snapshot: datetime,
    progress: Progress | None = None,
) -> Result:
    """Write the site export ``spec`` into the empty directory ``out_dir``; return the files and the manifest
    (also written, last, as ``manifest.json``). ``snapshot``: when the data was read (in the manifest)."""
    report = progress or NoProgress()
    params = spec.params
    files: list[FileResult] = []
    with conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        conn.execute("SET LOCAL TimeZone = 'UTC'")
        conn.execute("SET LOCAL DateStyle = 'ISO, YMD'")
        conn.execute("SET LOCAL extra_float_digits = 1")
        row = conn.execute("SELECT timezone FROM sites WHERE site_id = %s", (spec.site_id,)).fetchone()
        if row is None:
            raise ExportError(f"no site {spec.site_id!r}")
        w = window(str(row[0]), params.since, params.until)
        devices = _devices(conn, spec.site_id)
        h0, n_hours = reports.hour_span(w.start, w.end)
        n_slots = len(reports.slot_edges(w.start, w.end, params.slot_min)) - 1
        cells = vitality_cells(conn, spec.site_id, params) if "vitality" in params.datasets else []
        totals = {"utilisation": len(devices) * n_hours, "occupancy": n_slots, "vitality": len(cells)}
        report.totals({d: totals[d] for d in params.datasets})

        for name in params.datasets:
            report.step(name)
            target = out_dir / file_name(name, params.format, params.gzip)
            chunks: Iterator[Chunk]
            if name == "utilisation":
                values = {"site": spec.site_id, "h0": h0, "h1": h0 + timedelta(hours=n_hours)}
                chunks = _copy(conn, utilisation_query(), values)
            elif name == "occupancy":
                rows = occupancy_rows(conn, spec.site_id, w, params.slot_min, devices)
                chunks = csv_chunks(OCCUPANCY_COLUMNS, rows)
            else:
                chunks = csv_chunks(VITALITY_COLUMNS, _vitality_rows(cells))
            if params.format == "csv":
                done = write_csv(
                    chunks,
                    target,
                    name=target.name,
                    dataset=name,
                    compress=params.gzip,
                    on_rows=report.advance,
                )
            else:
                done = write_parquet(
                    chunks,
                    target,
                    name=target.name,
                    dataset=name,
                    columns=COLUMNS[name],
                    on_rows=report.advance,
                )
            files.append(done)
            logger.info("site export %s: %s, %d rows", spec.export_id, target.name, done.rows or 0)

    with HashingFile(out_dir / DICTIONARY) as out:
        out.write(_dictionary(params))
    files.append(FileResult(DICTIONARY, None, "text/csv", None, out.size, out.sha256))
    manifest = _manifest(spec, w, snapshot, files)
    with HashingFile(out_dir / MANIFEST) as out:
        out.write(msgspec.json.format(msgspec.json.encode(manifest), indent=2) + b"\n")
    return Result(files, manifest, [])


def _dictionary(params: SiteExportParams) -> bytes:
    """``data_dictionary.csv``: file, dataset, field, type, unit, meaning."""
    buf = io.StringIO()
    out = csv.writer(buf, lineterminator="\n")
    out.writerow(["file", "dataset", "field", "type", "unit", "meaning"])
    for name in params.datasets:
        target = file_name(name, params.format, params.gzip)
        for c in COLUMNS[name]:
            out.writerow([target, name, c.name, c.kind, c.unit or "", c.meaning])
    return buf.getvalue().encode()


def _manifest(
    spec: SiteExportSpec, w: Window, snapshot: datetime, files: Sequence[FileResult]
) -> dict[str, Any]:
    return {
        "export_id": str(spec.export_id),
        "site_id": spec.site_id,
        "timezone": w.timezone,
        "requested_by": spec.requested_by,
        "requested_at": _iso(spec.requested_at),
        "data_as_of": _iso(snapshot),
        "range": {"from": _iso(w.start), "to": _iso(w.end)},
        "parameters": spec.params.as_json(),
        "suppression": {"k_anonymity": spec.params.k, "rule": SUPPRESSION_RULE},
        "datasets": {d: MEANING[d] for d in spec.params.datasets},
        "schema": SITE_EXPORT_SCHEMA,
        "algorithm_version": ALGORITHM_VERSION,
        "files": [f.as_dict() for f in files],
    }
