"""A durable store-and-forward buffer for outgoing MQTT messages: one SQLite file in WAL mode.

The publisher writes every outgoing message here first and deletes it only once it is delivered: for
telemetry, once an ingester acknowledged its commit (:meth:`Buffer.ack_committed`, by ``(device, seq)``;
see :mod:`vitalab.wire.acks`), or with commit acks switched off and for retained meta and state, once the
broker confirmed it (:meth:`Buffer.ack`). So a broker outage or crash or a gateway restart loses nothing
that reached this file. A buffer written before entries carried their device and seq is upgraded in place
when opened (the columns are added and filled from the telemetry payloads). Entries come back from
:meth:`Buffer.peek` in insertion order (ids only grow, also across restarts: ``AUTOINCREMENT``).

**When full** (``max_entries`` or ``max_bytes``, whichever is reached first) an append never blocks and
never fails: it makes room by dropping the *oldest telemetry* (non-retained) entries first; retained
entries (device meta and state, a few per device) go only when no telemetry is left. Every dropped
entry is counted in :attr:`Buffer.dropped`; a warning is logged once per burst (the first drop after the
buffer last had room), and an info line when it has room again. An entry that alone exceeds
``max_bytes`` is refused with :class:`EntryTooLarge`.

**Durability.** Every append/ack is one transaction, committed before the call returns. With the default
``synchronous="NORMAL"`` (WAL) a commit survives a crash of the process (``kill -9``) at once, and the
file is never corrupted; on power loss or an OS crash the transactions since the last WAL checkpoint may
be rolled back: recent appends are lost, recent acks are undone (those messages are sent again:
duplicates, never loss of acknowledged data), and a recently reserved ``seq`` may be handed out again.
``synchronous="FULL"`` fsyncs every commit and loses nothing committed, at the cost of one fsync per
append.

**Dead frames.** The gateway keeps the frames it could not decode in the same file (table
``dead_frames``: time, device, source, the bytes, the reason), the newest :data:`MAX_DEAD_FRAMES` of them:
a local dead-letter log for whoever debugs a device (``vitalab gateway`` never sends them upstream: the
ingester takes decoded telemetry only).

**Concurrency.** One :class:`Buffer` is safe to use from several threads (one connection, serialised by
a lock; the publisher calls it through :func:`asyncio.to_thread`). The file is locked exclusively while it
is open (SQLite ``locking_mode=EXCLUSIVE``): a second process, or a second :class:`Buffer`, opening the
same file gets :class:`BufferInUse`, so two gateways can never hand out the same ``seq``.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

from vitalab.errors import VitalabError
from vitalab.wire.acks import message_key

logger = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    topic   TEXT    NOT NULL,
    payload BLOB    NOT NULL,
    retain  INTEGER NOT NULL,
    size    INTEGER NOT NULL,
    device  TEXT,
    seq     INTEGER
);
CREATE TABLE IF NOT EXISTS seq (
    device TEXT PRIMARY KEY,
    next   INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS dead_frames (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    t       TEXT    NOT NULL,
    device  TEXT,
    source  TEXT    NOT NULL,
    data    BLOB    NOT NULL,
    reason  TEXT    NOT NULL
);
"""
MAX_DEAD_FRAMES = 10_000
"""Dead frames kept (the newest); older ones are deleted as new ones come."""
_LOCK_WAIT_S = 0.5
_IN_CHUNK = 500  # ids per DELETE ... IN (...): below SQLite's host-parameter limit
_ENTRY = "id, topic, payload, retain, device, seq"


def _entry(r: Any) -> Entry:
    return Entry(
        int(r[0]),
        r[1],
        bytes(r[2]),
        bool(r[3]),
        None if r[4] is None else str(r[4]),
        None if r[5] is None else int(r[5]),
    )


# --- errors (to move into gateway/errors.py) ------------------------------------------------------------
class BufferInUse(VitalabError):
    """Another process (or another Buffer in this one) has the buffer file open."""

    def __init__(self, path: Path) -> None:
        super().__init__(f"{path} is in use by another gateway process")
        self.path = path


class EntryTooLarge(VitalabError):
    """One message is larger than the whole buffer may be."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"an entry of {size} bytes exceeds the buffer limit of {limit} bytes")
        self.size = size
        self.limit = limit


# --------------------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Entry:
    id: int
    topic: str
    payload: bytes
    retain: bool
    device: str | None = None
    seq: int | None = None
    """``(device, seq)`` of a telemetry entry: what a commit acknowledgement names."""


@dataclass(frozen=True, slots=True)
class DeadFrame:
    """A frame the gateway could not decode (or a raw-topic payload it could not read)."""

    t: datetime
    device: str | None
    source: str
    data: bytes
    reason: str


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A message to append."""

    topic: str
    payload: bytes
    retain: bool = False
    device: str | None = None
    seq: int | None = None


def entry_size(topic: str, payload: bytes) -> int:
    """What an entry counts against ``max_bytes``: its topic (UTF-8) and payload."""
    return len(topic.encode()) + len(payload)


class Buffer:
    """``with Buffer(path) as buf: buf.append(topic, payload); buf.peek(100); buf.ack(ids)``."""

    def __init__(
        self,
        path: Path,
        *,
        max_entries: int = 1_000_000,
        max_bytes: int | None = None,
        synchronous: Literal["NORMAL", "FULL"] = "NORMAL",
    ) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        if max_bytes is not None and max_bytes < 1:
            raise ValueError("max_bytes must be at least 1")
        self.path = path
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._count = 0
        self._bytes = 0
        self.dropped = 0
        """Entries dropped to make room since this buffer was opened."""
        self._burst = 0  # drops since the buffer last had room (0: not dropping)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, timeout=_LOCK_WAIT_S, isolation_level=None, check_same_thread=False)
        try:
            self._db.execute("PRAGMA locking_mode=EXCLUSIVE")
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={synchronous}")
            with self._tx():  # the first write takes the exclusive lock, kept until close()
                for stmt in _SCHEMA.split(";"):
                    if stmt.strip():
                        self._db.execute(stmt)
                self._upgrade()
            row = self._db.execute("SELECT count(*), total(size) FROM outbox").fetchone()
        except sqlite3.OperationalError as exc:
            self._db.close()
            if exc.sqlite_errorname in ("SQLITE_BUSY", "SQLITE_LOCKED"):
                raise BufferInUse(path) from exc
            raise
        self._count, self._bytes = int(row[0]), int(row[1])
        logger.info("buffer %s opened with %d entries (%d bytes)", path, self._count, self._bytes)

    def _upgrade(self) -> None:
        """Add the device and seq columns to a buffer file of an earlier version, filled from the payloads of
        its telemetry entries (in the opening transaction), and their index."""
        columns = {str(r[1]) for r in self._db.execute("PRAGMA table_info(outbox)")}
        if "device" not in columns:
            self._db.execute("ALTER TABLE outbox ADD COLUMN device TEXT")
            self._db.execute("ALTER TABLE outbox ADD COLUMN seq INTEGER")
            rows = self._db.execute("SELECT id, payload FROM outbox WHERE retain = 0").fetchall()
            keys = [(k.device, k.seq, r[0]) for r in rows if (k := message_key(bytes(r[1]))) is not None]
            self._db.executemany("UPDATE outbox SET device = ?, seq = ? WHERE id = ?", keys)
            logger.info(
                "buffer %s upgraded: %d telemetry entries carry their device and seq", self.path, len(keys)
            )
        self._db.execute("CREATE INDEX IF NOT EXISTS outbox_device_seq ON outbox (device, seq)")

    # --- lifecycle ------------------------------------------------------------------------------------
    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @contextmanager
    def _tx(self) -> Iterator[None]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # --- size -----------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self._count  # an int read: no lock needed, never blocks the event loop

    @property
    def nbytes(self) -> int:
        """Topic and payload bytes of all entries (what ``max_bytes`` bounds; SQLite adds overhead)."""
        return self._bytes

    def _full(self, count: int, nbytes: int, size: int) -> bool:
        return count + 1 > self.max_entries or (self.max_bytes is not None and nbytes + size > self.max_bytes)

    # --- writing --------------------------------------------------------------------------------------
    def append(self, topic: str, payload: bytes, *, retain: bool = False) -> int:
        """Store one message; returns its id. Drops the oldest telemetry if full (never blocks)."""
        return self.append_many([Outgoing(topic, payload, retain)])[0]

    def append_many(self, items: Sequence[Outgoing]) -> list[int]:
        """Store several messages in one transaction, in order; returns their ids."""
        sizes = [entry_size(it.topic, it.payload) for it in items]
        if self.max_bytes is not None:
            for size in sizes:
                if size > self.max_bytes:
                    raise EntryTooLarge(size, self.max_bytes)
        ids: list[int] = []
        with self._lock:
            count, nbytes, dropped = self._count, self._bytes, 0
            try:
                with self._tx():
                    for it, size in zip(items, sizes, strict=True):
                        while self._full(count, nbytes, size):
                            freed = self._drop_oldest()
                            if freed is None:
                                break
                            count, nbytes, dropped = count - 1, nbytes - freed, dropped + 1
                        cur = self._db.execute(
                            "INSERT INTO outbox (topic, payload, retain, size, device, seq) "
                            "VALUES (?, ?, ?, ?, ?, ?)",
                            (it.topic, it.payload, int(it.retain), size, it.device, it.seq),
                        )
                        assert cur.lastrowid is not None
                        ids.append(cur.lastrowid)
                        count, nbytes = count + 1, nbytes + size
            except BaseException:
                self._recount()
                raise
            self._count, self._bytes = count, nbytes
            if dropped:
                self._note_dropped(dropped)
        return ids

    def _drop_oldest(self) -> int | None:
        """Delete the oldest telemetry entry, else the oldest of any kind; returns its size."""
        for where in ("WHERE retain = 0", ""):
            row = self._db.execute(f"SELECT id, size FROM outbox {where} ORDER BY id LIMIT 1").fetchone()
            if row is not None:
                self._db.execute("DELETE FROM outbox WHERE id = ?", (row[0],))
                return int(row[1])
        return None

    def _note_dropped(self, n: int) -> None:
        self.dropped += n
        if self._burst == 0:
            logger.warning(
                "buffer %s full (%d entries, %d bytes): dropping the oldest telemetry; "
                "further drops are only counted until there is room again",
                self.path,
                self._count,
                self._bytes,
            )
        self._burst += n

    def _recount(self) -> None:
        row = self._db.execute("SELECT count(*), total(size) FROM outbox").fetchone()
        self._count, self._bytes = int(row[0]), int(row[1])

    # --- reading and acknowledging --------------------------------------------------------------------
    def peek(self, n: int, *, after: int = 0) -> list[Entry]:
        """Up to ``n`` oldest entries with an id above ``after``, in insertion order. Nothing is removed."""
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_ENTRY} FROM outbox WHERE id > ? ORDER BY id LIMIT ?", (after, n)
            ).fetchall()
        return [_entry(r) for r in rows]

    def get(self, ids: Iterable[int]) -> list[Entry]:
        """The entries with these ids that are still buffered, in insertion order."""
        todo = list(ids)
        out: list[Entry] = []
        with self._lock:
            for i in range(0, len(todo), _IN_CHUNK):
                chunk = todo[i : i + _IN_CHUNK]
                marks = ",".join("?" * len(chunk))
                rows = self._db.execute(f"SELECT {_ENTRY} FROM outbox WHERE id IN ({marks})", chunk)
                out.extend(_entry(r) for r in rows)
        return sorted(out, key=lambda e: e.id)

    def ack(self, ids: Iterable[int]) -> int:
        """Delete delivered entries; ids no longer present (dropped, acked before) are ignored.
        Returns how many were deleted."""
        todo = list(ids)
        if not todo:
            return 0

        def delete() -> list[tuple[int, int]]:
            out: list[tuple[int, int]] = []
            for i in range(0, len(todo), _IN_CHUNK):
                chunk = todo[i : i + _IN_CHUNK]
                marks = ",".join("?" * len(chunk))
                rows = self._db.execute(
                    f"DELETE FROM outbox WHERE id IN ({marks}) RETURNING id, size", chunk
                ).fetchall()
                out.extend((int(r[0]), int(r[1])) for r in rows)
            return out

        return len(self._delete(delete))

    def ack_committed(self, committed: Iterable[tuple[str, Sequence[tuple[int, int]]]]) -> list[int]:
        """Delete the telemetry entries that commit acknowledgements name: per device, inclusive ``seq``
        ranges. What is no longer (or never was) buffered is ignored. Returns the ids deleted."""
        todo = [(device, lo, hi) for device, ranges in committed for lo, hi in ranges]
        if not todo:
            return []

        def delete() -> list[tuple[int, int]]:
            out: list[tuple[int, int]] = []
            for device, lo, hi in todo:
                rows = self._db.execute(
                    "DELETE FROM outbox WHERE device = ? AND seq BETWEEN ? AND ? RETURNING id, size",
                    (device, lo, hi),
                ).fetchall()
                out.extend((int(r[0]), int(r[1])) for r in rows)
            return out

        return self._delete(delete)

    def _delete(self, delete: Callable[[], list[tuple[int, int]]]) -> list[int]:
        """Run ``delete`` (returning (id, size) of what it deleted) in one transaction and keep the count."""
        with self._lock:
            try:
                with self._tx():
                    rows = delete()
            except BaseException:
                self._recount()
                raise
            self._count -= len(rows)
            self._bytes -= sum(size for _, size in rows)
            if self._burst and not self._full(self._count, self._bytes, 0):
                logger.info("buffer %s has room again; %d entries were dropped", self.path, self._burst)
                self._burst = 0
        return [i for i, _ in rows]

    # --- per-device sequence numbers ------------------------------------------------------------------
    def reserve_seqs(self, counts: Mapping[str, int]) -> dict[str, int]:
        """Reserve ``counts[device]`` consecutive ``seq`` numbers per device; returns the first of each.

        Reserved numbers are committed before they are used, so a crash leaves gaps, never repeats
        (except on power loss with ``synchronous="NORMAL"``, see the module doc). New devices start at 0.
        """
        first: dict[str, int] = {}
        with self._lock, self._tx():
            for device, n in counts.items():
                row = self._db.execute(
                    "INSERT INTO seq (device, next) VALUES (?, ?) "
                    "ON CONFLICT (device) DO UPDATE SET next = next + excluded.next RETURNING next",
                    (device, n),
                ).fetchone()
                first[device] = int(row[0]) - n
        return first

    def next_seq(self, device: str) -> int:
        """The ``seq`` the next reservation for ``device`` starts at."""
        with self._lock:
            row = self._db.execute("SELECT next FROM seq WHERE device = ?", (device,)).fetchone()
        return 0 if row is None else int(row[0])

    # --- dead frames --------------------------------------------------------------------------------
    def add_dead_frames(self, frames: Sequence[DeadFrame]) -> None:
        """Keep undecodable frames (one transaction); only the newest :data:`MAX_DEAD_FRAMES` stay."""
        if not frames:
            return
        with self._lock, self._tx():
            self._db.executemany(
                "INSERT INTO dead_frames (t, device, source, data, reason) VALUES (?, ?, ?, ?, ?)",
                [(f.t.isoformat(), f.device, f.source, f.data, f.reason) for f in frames],
            )
            self._db.execute(
                "DELETE FROM dead_frames WHERE id <= (SELECT max(id) FROM dead_frames) - ?",
                (MAX_DEAD_FRAMES,),
            )

    def dead_frames(self, limit: int = 100) -> list[DeadFrame]:
        """The newest dead frames, newest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT t, device, source, data, reason FROM dead_frames ORDER BY id DESC LIMIT ?", (limit,)
            ).fetchall()
        return [DeadFrame(datetime.fromisoformat(r[0]), r[1], r[2], bytes(r[3]), r[4]) for r in rows]

    def count_dead_frames(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT count(*) FROM dead_frames").fetchone()[0])
