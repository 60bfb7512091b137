"""The store-and-forward buffer: order, persistence, the full policy, acks, seq reservation, exclusivity,
thread safety, and a committed append surviving ``kill -9``."""

from __future__ import annotations

import logging
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from gateway.buffer import Buffer, BufferInUse, EntryTooLarge, Outgoing, entry_size

T = "vitalab/v1/s/dev/d/telemetry"
M = "vitalab/v1/s/dev/d/meta"


def payloads(buf: Buffer) -> list[bytes]:
    return [e.payload for e in buf.peek(len(buf) + 1)]


def test_peek_returns_insertion_order_and_pages_after_an_id(tmp_path: Path) -> None:
    with Buffer(tmp_path / "b.sqlite") as buf:
        ids = [buf.append(T, b"%d" % i, retain=i % 7 == 0) for i in range(50)]
        assert ids == sorted(ids)
        assert len(buf) == 50
        entries = buf.peek(100)
        assert [e.payload for e in entries] == [b"%d" % i for i in range(50)]
        assert [e.retain for e in entries] == [i % 7 == 0 for i in range(50)]
        assert [e.id for e in buf.peek(3, after=ids[10])] == ids[11:14]
        assert buf.peek(5, after=ids[-1]) == []
        assert buf.peek(2) == entries[:2]  # peek removes nothing


def test_entries_and_seq_survive_close_and_reopen(tmp_path: Path) -> None:
    path = tmp_path / "b.sqlite"
    with Buffer(path) as buf:
        buf.append_many([Outgoing(T, b"a"), Outgoing(M, b"m", retain=True), Outgoing(T, b"b")])
        assert buf.reserve_seqs({"bike-1": 3, "hr-1": 1}) == {"bike-1": 0, "hr-1": 0}
        buf.ack([buf.peek(1)[0].id])
        before = buf.peek(10)
        nbytes = buf.nbytes
    with Buffer(path) as buf:
        assert buf.peek(10) == before
        assert [e.payload for e in before] == [b"m", b"b"]
        assert (len(buf), buf.nbytes) == (2, nbytes)
        assert buf.next_seq("bike-1") == 3
        assert buf.reserve_seqs({"bike-1": 2, "new": 1}) == {"bike-1": 3, "new": 0}
        later = buf.append(T, b"c")
        assert later > before[-1].id  # ids keep growing across restarts
    with Buffer(path) as buf:
        assert buf.next_seq("bike-1") == 5
        assert payloads(buf) == [b"m", b"b", b"c"]


def test_ack_deletes_and_ignores_unknown_or_repeated_ids(tmp_path: Path) -> None:
    with Buffer(tmp_path / "b.sqlite") as buf:
        ids = buf.append_many([Outgoing(T, b"x" * 10) for _ in range(1200)])
        assert buf.nbytes == 1200 * entry_size(T, b"x" * 10)
        assert buf.ack(ids[:1100]) == 1100  # more ids than one DELETE takes
        assert buf.ack([*ids[:5], 10**9]) == 0
        assert len(buf) == 100
        assert buf.nbytes == 100 * entry_size(T, b"x" * 10)
        assert [e.id for e in buf.peek(1000)] == ids[1100:]
        assert buf.ack([]) == 0


def test_full_drops_oldest_telemetry_first_and_counts_it(tmp_path: Path) -> None:
    with Buffer(tmp_path / "b.sqlite", max_entries=10) as buf:
        buf.append(M, b"meta-1", retain=True)
        buf.append(M, b"meta-2", retain=True)
        for i in range(25):
            buf.append(T, b"t%d" % i)
        assert len(buf) == 10
        assert buf.dropped == 17
        assert payloads(buf) == [b"meta-1", b"meta-2", *(b"t%d" % i for i in range(17, 25))]
        # with no telemetry left, the oldest entries of any kind go
        buf.ack([e.id for e in buf.peek(10) if not e.retain])
        for i in range(9):
            buf.append(M, b"state-%d" % i, retain=True)
        assert buf.dropped == 18
        assert payloads(buf)[0] == b"meta-2"


def test_byte_limit_drops_as_many_as_needed_and_refuses_an_entry_larger_than_the_limit(
    tmp_path: Path,
) -> None:
    one = entry_size(T, b"x" * 100)
    with Buffer(tmp_path / "b.sqlite", max_bytes=10 * one) as buf:
        buf.append_many([Outgoing(T, b"x" * 100) for _ in range(10)])
        assert (len(buf), buf.dropped) == (10, 0)
        buf.append(T, b"y" * 400)  # needs the room of four small ones
        assert buf.dropped == 4
        assert buf.nbytes <= 10 * one
        assert payloads(buf)[-1] == b"y" * 400
        with pytest.raises(EntryTooLarge) as info:
            buf.append(T, b"z" * 10 * one)
        assert info.value.limit == 10 * one
        assert len(buf) == 7  # nothing changed


def test_one_warning_per_burst_of_drops(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="gateway.buffer")
    with Buffer(tmp_path / "b.sqlite", max_entries=5) as buf:
        for i in range(20):
            buf.append(T, b"%d" % i)
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1
        assert buf.dropped == 15
        buf.ack([buf.peek(1)[0].id])  # room again: the burst ends
        assert any("room again; 15 entries were dropped" in r.getMessage() for r in caplog.records)
        for i in range(3):
            buf.append(T, b"again %d" % i)
        assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 2
        assert buf.dropped == 17


def test_a_second_open_of_the_same_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "b.sqlite"
    with Buffer(path):
        with pytest.raises(BufferInUse) as info:
            Buffer(path)
        assert info.value.path == path
    with Buffer(path) as buf:  # free again once closed
        assert len(buf) == 0


def test_concurrent_appends_and_acks_lose_and_duplicate_nothing(tmp_path: Path) -> None:
    writers, per_writer = 4, 400
    with Buffer(tmp_path / "b.sqlite") as buf:
        seen: list[bytes] = []
        done = threading.Event()

        def write(w: int) -> None:
            for i in range(0, per_writer, 4):  # alternately one transaction of four, four of one
                if i % 8 == 0:
                    buf.append_many([Outgoing(T, b"%d:%d" % (w, i + k)) for k in range(4)])
                else:
                    for k in range(4):
                        buf.append(T, b"%d:%d" % (w, i + k))

        def drain() -> None:
            last = 0
            while not (done.is_set() and len(buf) == 0):
                batch = buf.peek(50)
                if batch:
                    assert batch[0].id > last
                    last = batch[-1].id
                    seen.extend(e.payload for e in batch)
                    assert buf.ack(e.id for e in batch) == len(batch)

        threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
        consumer = threading.Thread(target=drain)
        consumer.start()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        done.set()
        consumer.join(30)
        assert not consumer.is_alive()
        assert (len(buf), buf.nbytes) == (0, 0)
    assert len(seen) == len(set(seen)) == writers * per_writer
    for w in range(writers):  # each writer's entries came out in its order
        mine = [int(p.split(b":")[1]) for p in seen if p.startswith(b"%d:" % w)]
        assert mine == list(range(per_writer))


_CRASH = """
import sys, time
from pathlib import Path
from gateway.buffer import Buffer
buf = Buffer(Path(sys.argv[1]))
for i in range(100):
    buf.append("vitalab/v1/s/dev/d/telemetry", b"%d" % i)
print("appended", flush=True)
time.sleep(60)
"""


def test_committed_appends_survive_kill_9(tmp_path: Path) -> None:
    path = tmp_path / "b.sqlite"
    proc = subprocess.Popen([sys.executable, "-c", _CRASH, str(path)], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"appended\n"
    finally:
        proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    with Buffer(path) as buf:
        assert payloads(buf) == [b"%d" % i for i in range(100)]


# --- commit acknowledgements: (device, seq) -----------------------------------------------------------


def _telemetry(device: str, seq: int) -> bytes:
    return b'{"v":1,"device":"%s","seq":%d,"samples":[{"t":"2026-11-25T10:00:00Z"}]}' % (device.encode(), seq)


def test_ack_committed_deletes_the_named_device_seq_ranges_only(tmp_path: Path) -> None:
    with Buffer(tmp_path / "b.sqlite", max_bytes=10_000_000) as buf:
        items = [
            Outgoing(T, _telemetry(d, s), device=d, seq=s) for d in ("bike-1", "hr-1") for s in range(10)
        ]
        items.append(Outgoing(M, b"m", retain=True))
        ids = buf.append_many(items)
        nbytes = buf.nbytes
        deleted = buf.ack_committed([("bike-1", [(0, 2), (5, 5)]), ("hr-1", [(9, 20)]), ("nobody", [(0, 9)])])
        assert deleted == [ids[0], ids[1], ids[2], ids[5], ids[19]]
        assert buf.ack_committed([("bike-1", [(0, 2)])]) == []  # repeated: ignored
        assert len(buf) == 21 - 5
        assert buf.nbytes == nbytes - sum(entry_size(T, items[i].payload) for i in (0, 1, 2, 5, 19))
        left = buf.get([ids[3], ids[0], ids[20]])
        assert [(e.device, e.seq, e.retain) for e in left] == [("bike-1", 3, False), (None, None, True)]
        assert buf.peek(1)[0].device == "bike-1"


def test_a_buffer_of_an_earlier_version_is_upgraded_in_place(tmp_path: Path) -> None:
    """Entries written before the device/seq columns existed get them from their payloads when the file is
    opened, so commit acks can name them."""
    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as old:
        old.executescript(
            """
            CREATE TABLE outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL,
                                 payload BLOB NOT NULL, retain INTEGER NOT NULL, size INTEGER NOT NULL);
            CREATE TABLE seq (device TEXT PRIMARY KEY, next INTEGER NOT NULL) WITHOUT ROWID;
            """
        )
        rows = [(T, _telemetry("bike-1", 7), 0), (M, b'{"v":1}', 1), (T, b"not json", 0)]
        old.executemany(
            "INSERT INTO outbox (topic, payload, retain, size) VALUES (?, ?, ?, ?)",
            [(t, p, r, entry_size(t, p)) for t, p, r in rows],
        )
    with Buffer(path) as buf:
        entries = buf.peek(10)
        assert [(e.device, e.seq) for e in entries] == [("bike-1", 7), (None, None), (None, None)]
        assert buf.ack_committed([("bike-1", [(7, 7)])]) == [entries[0].id]
        assert len(buf) == 2
    with Buffer(path) as buf:  # opening again changes nothing
        assert [e.payload for e in buf.peek(10)] == [b'{"v":1}', b"not json"]
