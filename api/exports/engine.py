"""Run one export: read every requested dataset from one database snapshot and write its files, the data
dictionary and ``manifest.json`` into a directory.

The whole export reads in one ``REPEATABLE READ READ ONLY`` transaction (one snapshot: row counts, data and
consent agree), with the session's time zone, date style and float output pinned so that the bytes do not
depend on the server's settings. CSV and Parquet stream ``COPY (query) TO STDOUT``; FHIR and Open mHealth read
through a server-side cursor. Nothing is held per row: memory is flat in the row count.

The caller owns atomicity: it passes an empty temporary directory and renames it into place after
:func:`run` returns (see :mod:`api.exports.jobs`).
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Literal, Protocol, get_args
from uuid import UUID

import msgspec
import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from analytics.version import ALGORITHM_VERSION
from api.exports import fhir, omh
from api.exports.consent import ctes
from api.exports.datasets import (
    BY_NAME,
    DATASETS,
    SESSIONS,
    Column,
    Dataset,
    DatasetName,
    Scope,
    bind,
    columns_of,
    session_series_query,
)
from api.exports.files import Chunk, FileResult, HashingFile
from api.exports.pseudonyms import pads
from api.exports.writers import write_csv, write_ndjson, write_parquet

logger = logging.getLogger(__name__)

Format = Literal["csv", "parquet", "fhir-r4", "omh"]
FORMATS: Final[tuple[Format, ...]] = get_args(Format)
SUPPORTED: Final[dict[Format, tuple[DatasetName, ...]]] = {
    "csv": DATASETS,
    "parquet": DATASETS,
    "fhir-r4": ("sessions", "samples", "daily"),
    "omh": ("sessions", "samples", "rr"),
}
EXPORT_SCHEMA: Final = "vitalab-export/1"
"""Version of the layout of an export (file names, columns, manifest); bump when any of them changes."""
MANIFEST: Final = "manifest.json"
DICTIONARY: Final = "data_dictionary.csv"
CURSOR_ROWS: Final = 5000
CONSENT_RULE: Final = (
    "data at time t of a participant is included for a scope when the consent record in force at t "
    "included the scope and the participant's newest consent record written by the consent snapshot time "
    "still does; a session or day must lie wholly inside the consented time; only the study's sites; "
    "only the study's period"
)


class ExportError(Exception):
    """The export cannot be made as asked (unknown study, a scope the study does not ask for ...)."""


@dataclass(frozen=True, slots=True)
class ExportParams:
    """What a researcher asked for; ``as_json`` is stored with the job and copied into the manifest."""

    datasets: tuple[DatasetName, ...]
    format: Format
    since: datetime | None = None
    until: datetime | None = None
    pseudonyms: tuple[str, ...] | None = None
    gzip: bool = False

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ExportError(f"unknown format {self.format!r} (one of {', '.join(FORMATS)})")
        if not self.datasets:
            raise ExportError("no dataset asked for")
        unsupported = [d for d in self.datasets if d not in SUPPORTED[self.format]]
        if unsupported:
            raise ExportError(
                f"format {self.format} does not carry {', '.join(unsupported)} "
                f"(it carries {', '.join(SUPPORTED[self.format])})"
            )
        if self.gzip and self.format == "parquet":
            raise ExportError("parquet files are compressed inside (zstd); gzip applies to csv, fhir-r4, omh")
        if self.since is not None and self.until is not None and self.since >= self.until:
            raise ExportError("since must be before until")

    @classmethod
    def canonical(
        cls,
        datasets: Sequence[DatasetName],
        format: Format,
        since: datetime | None = None,
        until: datetime | None = None,
        pseudonyms: Sequence[str] | None = None,
        gzip: bool = False,
    ) -> ExportParams:
        """Parameters in one canonical form: datasets in the order of :data:`DATASETS`, pseudonyms sorted
        and unique, times in UTC."""
        unknown = sorted(set(datasets) - set(DATASETS))
        if unknown:
            raise ExportError(f"unknown dataset(s) {', '.join(unknown)} (known: {', '.join(DATASETS)})")
        return cls(
            tuple(d for d in DATASETS if d in set(datasets)),
            format,
            None if since is None else since.astimezone(UTC),
            None if until is None else until.astimezone(UTC),
            None if pseudonyms is None else tuple(sorted(set(pseudonyms))),
            gzip,
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "datasets": list(self.datasets),
            "format": self.format,
            "since": _iso(self.since),
            "until": _iso(self.until),
            "pseudonyms": None if self.pseudonyms is None else list(self.pseudonyms),
            "gzip": self.gzip,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ExportParams:
        return cls.canonical(
            data["datasets"],
            data["format"],
            _parse(data.get("since")),
            _parse(data.get("until")),
            data.get("pseudonyms"),
            bool(data.get("gzip", False)),
        )


def _iso(t: datetime | None) -> str | None:
    return None if t is None else t.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _parse(s: str | None) -> datetime | None:
    return None if s is None else datetime.fromisoformat(s)


@dataclass(frozen=True, slots=True)
class ExportSpec:
    """An export to make: its id, study, who asked and when, and the parameters."""

    export_id: UUID
    study_id: str
    requested_by: str
    requested_at: datetime
    params: ExportParams


class Progress(Protocol):
    """Told how far an export is (the job table, a progress bar)."""

    def totals(self, rows: Mapping[str, int]) -> None: ...

    def step(self, dataset: str) -> None: ...

    def advance(self, rows: int) -> None: ...


class NoProgress:
    def totals(self, rows: Mapping[str, int]) -> None:
        pass

    def step(self, dataset: str) -> None:
        pass

    def advance(self, rows: int) -> None:
        pass


@dataclass(frozen=True, slots=True)
class Result:
    files: list[FileResult]
    manifest: dict[str, Any]
    participants: list[UUID] = field(default_factory=list)
    """Internal ids of the participants with consented time in the export (for erasure reports)."""


@dataclass(frozen=True, slots=True)
class _Study:
    study_id: str
    scopes: tuple[str, ...]
    key: bytes


def _study(conn: psycopg.Connection, study_id: str) -> _Study:
    row = conn.execute(
        "SELECT s.scopes, k.hmac_key FROM studies s JOIN study_keys k USING (study_id) WHERE s.study_id = %s",
        (study_id,),
    ).fetchone()
    if row is None:
        raise ExportError(f"no study {study_id!r} (or it has no pseudonym key)")
    return _Study(study_id, tuple(row[0]), bytes(row[1]))


def file_name(dataset: str, fmt: Format, compress: bool) -> str:
    ext = {"csv": "csv", "parquet": "parquet", "fhir-r4": "fhir.ndjson", "omh": "omh.ndjson"}[fmt]
    return f"{dataset}.{ext}" + (".gz" if compress else "")


def run(
    conn: psycopg.Connection,
    spec: ExportSpec,
    out_dir: Path,
    snapshot: datetime,
    progress: Progress | None = None,
    *,
    count_rows: bool = True,
) -> Result:
    """Write the export ``spec`` into the empty directory ``out_dir`` applying the consent records written
    up to ``snapshot``; return the files and the manifest (also written, last, as ``manifest.json``)."""
    report = progress or NoProgress()
    params = spec.params
    with conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        conn.execute("SET LOCAL TimeZone = 'UTC'")
        conn.execute("SET LOCAL DateStyle = 'ISO, YMD'")
        conn.execute("SET LOCAL extra_float_digits = 1")
        study = _study(conn, spec.study_id)
        missing = [d for d in params.datasets if BY_NAME[d].scope not in study.scopes]
        if missing:
            raise ExportError(
                f"study {spec.study_id!r} does not ask for the scope of {', '.join(missing)} "
                f"(it asks for {', '.join(study.scopes) or 'nothing'})"
            )
        p = pads(study.key)

        def values(scope: Scope) -> dict[str, object]:
            return bind(
                study_id=study.study_id,
                scope=scope,
                snapshot=snapshot,
                since=params.since,
                until=params.until,
                subset=params.pseudonyms,
                inner=p.inner,
                outer=p.outer,
                algorithm_version=ALGORITHM_VERSION,
            )

        if count_rows:
            totals: dict[str, int] = {}
            for name in params.datasets:
                ds = BY_NAME[name]
                counted = SESSIONS if (params.format == "fhir-r4" and name == "samples") else ds
                row = conn.execute(counted.count(), values(ds.scope)).fetchone()
                totals[name] = int(row[0]) if row else 0
            report.totals(totals)

        files: list[FileResult] = []
        for name in params.datasets:
            ds = BY_NAME[name]
            report.step(name)
            target = file_name(name, params.format, params.gzip)
            files.append(_write(conn, study, ds, params, values(ds.scope), out_dir / target, report.advance))
            logger.info("export %s: %s, %d rows", spec.export_id, target, files[-1].rows or 0)

        people = _participants(conn, {BY_NAME[d].scope for d in params.datasets}, values)

    dictionary = _dictionary(study, params)
    with HashingFile(out_dir / DICTIONARY) as out:
        out.write(dictionary)
    files.append(FileResult(DICTIONARY, None, "text/csv", None, out.size, out.sha256))
    manifest = _manifest(spec, snapshot, files)
    with HashingFile(out_dir / MANIFEST) as out:
        out.write(msgspec.json.format(msgspec.json.encode(manifest), indent=2) + b"\n")
    return Result(files, manifest, people)


def _rows(
    conn: psycopg.Connection, query: sql.Composed, values: Mapping[str, object]
) -> Iterator[dict[str, Any]]:
    with conn.cursor(name="vitalab_export", row_factory=dict_row) as cur:
        cur.itersize = CURSOR_ROWS
        cur.execute(query, values)
        yield from cur


def _copy(conn: psycopg.Connection, query: sql.Composable, values: Mapping[str, object]) -> Iterator[Chunk]:
    with (
        conn.cursor() as cur,
        cur.copy(sql.SQL("COPY ({}) TO STDOUT (FORMAT csv, HEADER)").format(query), values) as copy,
    ):
        yield from copy


def _write(
    conn: psycopg.Connection,
    study: _Study,
    ds: Dataset,
    params: ExportParams,
    values: dict[str, object],
    path: Path,
    on_rows: Callable[[int], None],
) -> FileResult:
    fmt = params.format
    cols: tuple[Column, ...] = columns_of(ds, study.scopes)
    if fmt == "csv":
        return write_csv(
            _copy(conn, ds.query(cols), values),
            path,
            name=path.name,
            dataset=ds.name,
            compress=params.gzip,
            on_rows=on_rows,
        )
    if fmt == "parquet":
        return write_parquet(
            _copy(conn, ds.query(cols), values),
            path,
            name=path.name,
            dataset=ds.name,
            columns=cols,
            on_rows=on_rows,
        )
    sid = study.study_id
    lines: Iterator[bytes]
    if fmt == "fhir-r4":
        media = fhir.MEDIA_TYPE
        if ds.name == "sessions":
            lines = fhir.session_bundles(sid, _rows(conn, ds.query(cols), values))
        elif ds.name == "samples":
            lines = fhir.series_bundles(sid, fhir.series_of(_rows(conn, session_series_query(), values)))
        else:
            lines = fhir.daily_bundles(sid, _rows(conn, ds.query(cols), values))
    else:
        media = omh.MEDIA_TYPE
        if ds.name == "sessions":
            lines = omh.physical_activity_points(sid, _rows(conn, ds.query(cols), values))
        elif ds.name == "samples":
            lines = omh.heart_rate_points(sid, _rows(conn, ds.query(cols), values))
        else:
            lines = omh.rr_interval_points(sid, _rows(conn, ds.query(cols), values))
    return write_ndjson(
        lines, path, name=path.name, dataset=ds.name, media_type=media, compress=params.gzip, on_rows=on_rows
    )


def _participants(
    conn: psycopg.Connection, scopes: set[Scope], values: Callable[[Scope], dict[str, object]]
) -> list[UUID]:
    found: set[UUID] = set()
    for scope in sorted(scopes):
        query = sql.SQL("WITH {} SELECT participant_id FROM cs_spans").format(ctes())
        found.update(UUID(str(r[0])) for r in conn.execute(query, values(scope)))
    return sorted(found)


def _dictionary(study: _Study, params: ExportParams) -> bytes:
    """``data_dictionary.csv``: file, dataset, field, type, unit, meaning."""
    buf = io.StringIO()
    out = csv.writer(buf, lineterminator="\n")
    out.writerow(["file", "dataset", "field", "type", "unit", "meaning"])
    for name in params.datasets:
        ds = BY_NAME[name]
        target = file_name(name, params.format, params.gzip)
        if params.format in ("csv", "parquet"):
            for c in columns_of(ds, study.scopes):
                out.writerow([target, name, c.name, c.kind, c.unit or "", c.meaning])
        elif params.format == "fhir-r4":
            codes: Sequence[tuple[str, fhir.Code]] = (
                [(col, code) for col, code, _ in fhir.SESSION_CODES]
                if name == "sessions"
                else fhir.SERIES_CODES
                if name == "samples"
                else [(col, code) for col, code, _ in fhir.DAILY_CODES]
            )
            kind = "valueSampledData (period 1000 ms)" if name == "samples" else "valueQuantity"
            for col, code in codes:
                out.writerow(
                    [target, name, f"{code.system}|{code.code}", kind, code.unit, f"{code.text} ({col})"]
                )
        else:
            schema = {"sessions": omh.PHYSICAL_ACTIVITY, "samples": omh.HEART_RATE, "rr": omh.RR_INTERVAL}[
                name
            ]
            ident = f"{schema['namespace']}:{schema['name']}:{schema['version']}"
            out.writerow([target, name, ident, "omh:data-point:1.0", "", ds.meaning])
    return buf.getvalue().encode()


def _manifest(spec: ExportSpec, snapshot: datetime, files: Sequence[FileResult]) -> dict[str, Any]:
    return {
        "export_id": str(spec.export_id),
        "study_id": spec.study_id,
        "requested_by": spec.requested_by,
        "requested_at": _iso(spec.requested_at),
        "consent_snapshot": _iso(snapshot),
        "consent_rule": CONSENT_RULE,
        "parameters": spec.params.as_json(),
        "schema": EXPORT_SCHEMA,
        "algorithm_version": ALGORITHM_VERSION,
        "files": [f.as_dict() for f in files],
    }
