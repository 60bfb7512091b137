"""Streaming writers: a dataset's rows go from the database to one file without being held in memory.

* CSV: the bytes of ``COPY (query) TO STDOUT (FORMAT csv, HEADER)`` (PostgreSQL's RFC 4180 writer: header
  row, ``NULL`` as an empty field, a quoted ``""`` for an empty string), optionally gzip-compressed
  (deterministic: no name and mtime 0 in the gzip header).
* Parquet: the same CSV stream cut into blocks of whole lines (:data:`CSV_BLOCK_BYTES`), each parsed by
  pyarrow's CSV reader into the dataset's typed Arrow schema (UTC timestamps in microseconds, float32 for
  PostgreSQL ``real``, ...) and written as one row group with :class:`pyarrow.parquet.ParquetWriter` (zstd).
  One block is held at a time: memory is flat in the row count. (pyarrow's streaming reader, ``open_csv``,
  is not used: it reads up to 32 blocks ahead in a background thread, whatever ``use_threads`` says: 256 MB
  of CSV at 8 MB blocks, held while the Parquet side is slower; bench/bench_export.py measured it.)
* NDJSON (FHIR R4 Bundles, Open mHealth data points): one JSON document per line, produced by the format's
  module from rows read through a server-side cursor.

Every writer writes into a :class:`~api.exports.files.HashingFile` and reports the rows it wrote through
``on_rows`` (increments) as it goes.
"""

from __future__ import annotations

import gzip
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any, Final, cast

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from api.exports.datasets import Column, Kind
from api.exports.files import Chunk, FileResult, HashingFile

OnRows = Callable[[int], None]
GZIP_LEVEL: Final = 6
CSV_BLOCK_BYTES: Final = 8 << 20
"""Bytes of CSV parsed at once (whole lines): one Parquet row group per block (~100k sample rows)."""
PARSE_BLOCK_BYTES: Final = 1 << 20
"""pyarrow parses a block in pieces of this size, in parallel (its CPU thread pool)."""
PARQUET_COMPRESSION: Final = "zstd"

_ARROW: Final[dict[Kind, pa.DataType]] = {
    "string": pa.string(),
    "timestamp": pa.timestamp("us", tz="UTC"),
    "date": pa.date32(),
    "float32": pa.float32(),
    "float64": pa.float64(),
    "int16": pa.int16(),
    "int32": pa.int32(),
    "bool": pa.bool_(),
}


def arrow_schema(columns: Sequence[Column]) -> pa.Schema:
    return pa.schema([pa.field(c.name, _ARROW[c.kind]) for c in columns])


def _gzip(raw: HashingFile) -> gzip.GzipFile:
    return gzip.GzipFile(filename="", mode="wb", compresslevel=GZIP_LEVEL, fileobj=raw, mtime=0)


def write_csv(
    chunks: Iterable[Chunk],
    path: Path,
    *,
    name: str,
    dataset: str,
    compress: bool,
    on_rows: OnRows,
) -> FileResult:
    """Write COPY CSV output (with a header line) to ``path``; rows are counted by line ends (exported
    values never contain a line break)."""
    raw = HashingFile(path)
    rows = -1  # the header line
    rows_reported = 0
    try:
        out: gzip.GzipFile | HashingFile = _gzip(raw) if compress else raw
        try:
            pending: list[bytes] = []
            size = 0
            for chunk in chunks:  # one row per chunk from COPY: written and counted in ~1 MB blocks
                data = chunk if isinstance(chunk, bytes) else bytes(chunk)
                pending.append(data)
                size += len(data)
                if size >= WRITE_BYTES:
                    rows += _flush(out, pending)
                    on_rows(rows - rows_reported)
                    rows_reported = rows
                    size = 0
            rows += _flush(out, pending)
            if rows > rows_reported:
                on_rows(rows - rows_reported)
        finally:
            if out is not raw:
                out.close()
    finally:
        raw.close()
    media = "application/gzip" if compress else "text/csv"
    return FileResult(name, dataset, media, rows, raw.size, raw.sha256)


WRITE_BYTES: Final = 1 << 20


def _flush(out: gzip.GzipFile | HashingFile, pending: list[bytes]) -> int:
    """Write and forget ``pending``; the line ends it held."""
    block = b"".join(pending)
    pending.clear()
    out.write(block)
    return block.count(b"\n")


def write_parquet(
    chunks: Iterator[Chunk],
    path: Path,
    *,
    name: str,
    dataset: str,
    columns: Sequence[Column],
    on_rows: OnRows,
) -> FileResult:
    """Parse COPY CSV output (with a header line) into ``columns``' Arrow types and write it as Parquet, one
    row group per block of whole lines. ValueError if the header does not name ``columns``."""
    schema = arrow_schema(columns)
    read = pacsv.ReadOptions(column_names=schema.names, block_size=PARSE_BLOCK_BYTES, use_threads=True)
    parse = pacsv.ParseOptions(newlines_in_values=False)
    convert = pacsv.ConvertOptions(
        column_types={f.name: f.type for f in schema},
        strings_can_be_null=True,
        quoted_strings_can_be_null=False,
        null_values=[""],
    )
    raw = HashingFile(path)
    rows = 0
    try:
        with pq.ParquetWriter(
            cast(IO[Any], raw), schema, compression=PARQUET_COMPRESSION, write_statistics=True
        ) as writer:
            for block in _line_blocks(chunks, CSV_BLOCK_BYTES, schema.names):
                table = pacsv.read_csv(
                    cast(IO[Any], pa.BufferReader(block)),
                    read_options=read,
                    parse_options=parse,
                    convert_options=convert,
                )
                if table.num_rows:
                    writer.write_table(table, row_group_size=table.num_rows)
                    rows += table.num_rows
                    on_rows(table.num_rows)
    finally:
        raw.close()
    return FileResult(name, dataset, "application/vnd.apache.parquet", rows, raw.size, raw.sha256)


def _line_blocks(chunks: Iterable[Chunk], size: int, header: Sequence[str]) -> Iterator[bytearray]:
    """The stream after its header line, in blocks of whole lines of at least ``size`` bytes (the last one
    shorter). Each block is a new buffer: a block handed out is never written to again."""
    buf = bytearray()
    seen_header = False
    for chunk in chunks:
        buf += chunk
        if not seen_header:
            end = buf.find(b"\n")
            if end < 0:
                continue
            got = buf[:end].decode().split(",")
            if got != list(header):
                raise ValueError(f"CSV header {got} is not the dataset's columns {list(header)}")
            del buf[: end + 1]
            seen_header = True
        if len(buf) >= size:
            cut = buf.rfind(b"\n") + 1
            if cut >= size:
                block, buf = buf[:cut], buf[cut:]
                yield block
    if buf:
        if not buf.endswith(b"\n"):
            buf += b"\n"
        yield buf


def write_ndjson(
    lines: Iterable[bytes],
    path: Path,
    *,
    name: str,
    dataset: str,
    media_type: str,
    compress: bool,
    on_rows: OnRows,
    report_every: int = 1000,
) -> FileResult:
    """Write one JSON document per line (each item of ``lines`` ends with ``\\n``)."""
    raw = HashingFile(path)
    rows = 0
    pending = 0
    try:
        out: gzip.GzipFile | HashingFile = _gzip(raw) if compress else raw
        try:
            buffered: list[bytes] = []
            size = 0
            for line in lines:
                buffered.append(line)
                size += len(line)
                rows += 1
                pending += 1
                if size >= 1 << 20:
                    out.write(b"".join(buffered))
                    buffered.clear()
                    size = 0
                if pending >= report_every:
                    on_rows(pending)
                    pending = 0
            if buffered:
                out.write(b"".join(buffered))
        finally:
            if out is not raw:
                out.close()
    finally:
        raw.close()
    if pending:
        on_rows(pending)
    return FileResult(
        name, dataset, "application/gzip" if compress else media_type, rows, raw.size, raw.sha256
    )
