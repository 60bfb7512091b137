"""Database errors, by SQLSTATE class: transient ones are retried, a batch the database refuses for its
content loses only the message responsible (dead-lettered), anything else stops the ingester with one line.
Real Mosquitto, real PostgreSQL."""

from __future__ import annotations

import asyncio
import functools
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator

import msgspec
import psycopg
import pytest
from psycopg import errors as pgerrors
from psycopg import sql

from ingest.dberrors import DatabaseRejected, Severity, classify, describe
from simulators.loadgen import LoadPublisher
from tests.conftest import Mosquitto
from tests.support.helpers import (
    count,
    ingester_task,
    make_settings,
    metric,
    running_ingester,
    scalar,
    wait_until,
)
from tests.support.workload import Workload, publish_paced, stored

# --- classification -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "severity"),
    [
        (pgerrors.AdminShutdown, Severity.TRANSIENT),  # 57P01: the server is restarting
        (pgerrors.CannotConnectNow, Severity.TRANSIENT),  # 57P03: still starting up
        (pgerrors.ConnectionFailure, Severity.TRANSIENT),  # 08006
        (pgerrors.DeadlockDetected, Severity.TRANSIENT),  # 40P01
        (pgerrors.SerializationFailure, Severity.TRANSIENT),  # 40001
        (pgerrors.TooManyConnections, Severity.TRANSIENT),  # 53300
        (pgerrors.DiskFull, Severity.TRANSIENT),  # 53100
        (pgerrors.QueryCanceled, Severity.TRANSIENT),  # 57014: statement timeout
        (pgerrors.CheckViolation, Severity.DATA),  # 23514
        (pgerrors.NotNullViolation, Severity.DATA),  # 23502
        (pgerrors.UntranslatableCharacter, Severity.DATA),  # 22P05
        (pgerrors.NumericValueOutOfRange, Severity.DATA),  # 22003
        (pgerrors.UndefinedTable, Severity.FATAL),  # 42P01: schema mismatch
        (pgerrors.UndefinedColumn, Severity.FATAL),  # 42703
        (pgerrors.InsufficientPrivilege, Severity.FATAL),  # 42501
        (pgerrors.InvalidSchemaName, Severity.FATAL),  # 3F000
        (pgerrors.ReadOnlySqlTransaction, Severity.FATAL),  # 25006: a standby
        (pgerrors.FeatureNotSupported, Severity.FATAL),  # 0A000
        (pgerrors.InternalError_, Severity.FATAL),  # XX000
    ],
)
def test_errors_are_classified_by_sqlstate_class(error: type[psycopg.Error], severity: Severity) -> None:
    exc = error("from the server")
    assert exc.sqlstate is not None
    assert classify(exc) is severity
    assert describe(exc).startswith(f"{exc.sqlstate} {error.__name__}: ")


@pytest.mark.parametrize(
    ("exc", "severity"),
    [
        (psycopg.OperationalError("connection failed: Connection refused"), Severity.TRANSIENT),
        (psycopg.InterfaceError("the connection is closed"), Severity.TRANSIENT),
        (psycopg.DataError("PostgreSQL text fields cannot contain NUL (0x00) bytes"), Severity.DATA),
        (UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed"), Severity.DATA),
        (OverflowError("int too big"), Severity.DATA),
        (msgspec.EncodeError("cannot encode"), Severity.DATA),
        (psycopg.ProgrammingError("query has 2 placeholders but 1 parameters"), Severity.FATAL),
    ],
)
def test_errors_without_a_sqlstate_are_classified_by_kind(exc: BaseException, severity: Severity) -> None:
    assert classify(exc) is severity


# --- against the real services ------------------------------------------------------------------------


async def _stored_at_least(url: str, n: int, where: str = "TRUE") -> bool:
    return await count(url, "samples", where) >= n


def _ingest_process(database_url: str, mqtt_url: str, client_id: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VITALAB_")}
    env.update(
        VITALAB_DATABASE_URL=database_url,
        VITALAB_MQTT_URL=mqtt_url,
        VITALAB_INGEST_CLIENT_ID=client_id,
        VITALAB_INGEST_SHARE_GROUP="",  # a plain subscription: its session outlives a stop
        VITALAB_INGEST_BATCH_AGE_MS="50",
        VITALAB_TIMESCALE="off",
    )
    return subprocess.Popen(
        [sys.executable, "-m", "vitalab", "ingest", "--log-level", "warning"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.asyncio
async def test_schema_mismatch_stops_the_ingester_with_one_line_and_loses_nothing(
    mosquitto: Mosquitto, database_url: str
) -> None:
    work = Workload.build("mismatch", devices=2, seconds=10, per_message=5)
    plain = make_settings(ingest_client_id="ingest-mm", ingest_share_group=None)
    async with running_ingester(plain, mosquitto.target, database_url):
        pass  # the persistent session exists from here on: what is published next waits in it
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("ALTER TABLE samples DROP COLUMN met")  # a schema this ingester does not match
    with LoadPublisher(mosquitto.target, "pub-mm") as pub:
        for t, p in work.messages:
            pub.publish(t, p)
        await asyncio.to_thread(pub.wait_acked)
    proc = _ingest_process(database_url, mosquitto.url, "ingest-mm")
    try:
        _, err = await asyncio.to_thread(proc.communicate, timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 1
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("vitalab ingest: database error is not transient, the ingester stops: 42703 ")
    assert "UndefinedColumn" in last
    assert '"met"' in last
    # nothing was acknowledged: with the schema fixed, the next ingester stores every sample
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("ALTER TABLE samples ADD COLUMN met real")
    async with running_ingester(plain, mosquitto.target, database_url):
        await wait_until(lambda: _stored_at_least(database_url, len(work.expected)), what="every sample")
    assert stored(database_url) == work.expected


@pytest.fixture
def unprivileged(database_url: str) -> Iterator[str]:
    """The test database reached as a role that may read the ingester's tables but not write samples."""
    role = f"vitalab_ro_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
        grant = sql.SQL("GRANT SELECT ON ALL TABLES IN SCHEMA public TO {}")
        conn.execute(grant.format(sql.Identifier(role)))
    params = psycopg.conninfo.conninfo_to_dict(database_url)
    params["user"] = role
    try:
        yield psycopg.conninfo.make_conninfo(**params)  # type: ignore[arg-type]
    finally:
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", (role,))
            conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


@pytest.mark.asyncio
async def test_missing_privileges_stop_the_ingester_instead_of_retrying(
    mosquitto: Mosquitto, unprivileged: str
) -> None:
    work = Workload.build("priv", devices=1, seconds=5, per_message=5)
    settings = make_settings(ingest_client_id="ingest-priv")

    seen: dict[str, object] = {}

    async def publish_and_wait_for_the_stop() -> None:
        async with ingester_task(settings, mosquitto.target, unprivileged) as (ingester, task):
            with LoadPublisher(mosquitto.target, "pub-priv") as pub:
                pub.publish(*work.messages[0])
                await asyncio.to_thread(pub.wait_acked)
            done, _ = await asyncio.wait({task}, timeout=30)
            # kept, and asserted after the block: leaving it re-raises what stopped the ingester, which
            # would hide a failed assertion made here
            seen["stopped by itself"] = task in done
            seen["db errors"] = metric(ingester, "vitalab_ingest_db_errors_total")
            seen["batches"] = ingester.committed_batches

    with pytest.raises(DatabaseRejected) as stopped:
        await publish_and_wait_for_the_stop()
    assert seen == {"stopped by itself": True, "db errors": 0, "batches": 0}  # at once, and not retried
    assert stopped.value.sqlstate == "42501"
    assert "InsufficientPrivilege: permission denied for table" in str(stopped.value)


@pytest.mark.asyncio
async def test_a_dropped_connection_is_retried_and_loses_nothing(
    mosquitto: Mosquitto, database_url: str
) -> None:
    work = Workload.build("drop", devices=8, seconds=300, per_message=5)  # 480 messages, 2,400 samples
    settings = make_settings(ingest_client_id="ingest-drop", ingest_batch_rows=100)
    async with ingester_task(settings, mosquitto.target, database_url) as (ingester, task):
        with LoadPublisher(mosquitto.target, "pub-drop") as pub:
            sender = publish_paced(pub, work.messages, rate_per_s=400)
            for goal in (len(work.expected) // 4, len(work.expected) // 2):
                await wait_until(functools.partial(_stored_at_least, database_url, goal), what="progress")
                # 57P01 admin_shutdown on the ingester's session, as a server restart or a proxy would
                terminated = await scalar(
                    database_url,
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()",
                )
                assert isinstance(terminated, int)
                assert terminated >= 1  # the ingester's writers' connections (one per writer in use)
            await asyncio.to_thread(sender.join)
            await asyncio.to_thread(pub.wait_acked)
        await wait_until(
            lambda: _stored_at_least(database_url, len(work.expected)), timeout_s=60, what="every sample"
        )
        assert not task.done()
        assert metric(ingester, "vitalab_ingest_db_errors_total") >= 2  # each loss was seen and retried
        assert ingester.db_ok
    assert stored(database_url) == work.expected


@pytest.mark.asyncio
async def test_a_message_the_database_refuses_is_dead_lettered_and_its_batch_is_stored(
    mosquitto: Mosquitto, database_url: str
) -> None:
    """A database stricter than the wire contract (here a CHECK it does not know about) refuses one
    message's rows: the batch is split until that message is found; it alone is dead-lettered."""
    work = Workload.build("strict", devices=5, seconds=100, per_message=5)  # 100 messages, 500 samples
    # hr_bpm is 60 + (s % 100): exactly 5 samples (s = 13, one per device) have hr_bpm 73
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("ALTER TABLE samples ADD CONSTRAINT no_73 CHECK (hr_bpm IS DISTINCT FROM 73)")
    refused = [(t, p) for t, p in work.messages if any(s["hr_bpm"] == 73 for s in json.loads(p)["samples"])]
    assert len(refused) == 5
    settings = make_settings(
        ingest_client_id="ingest-strict", ingest_batch_age_ms=200, ingest_share_group=None
    )
    async with running_ingester(settings, mosquitto.target, database_url):
        pass  # the persistent session exists from here on
    with LoadPublisher(mosquitto.target, "pub-strict") as pub:
        for t, p in work.messages:
            pub.publish(t, p)
        await asyncio.to_thread(pub.wait_acked)
    async with ingester_task(settings, mosquitto.target, database_url) as (ingester, task):
        await wait_until(lambda: _stored_at_least(database_url, 500 - 5 * 5), what="the other samples")
        await wait_until(lambda: _dead(database_url, 5), what="5 dead letters")
        assert not task.done()
        assert ingester.committed_batches < len(work.messages)  # they came in batches, not one by one
        assert metric(ingester, "vitalab_ingest_dead_letters_total", reason="database_rejected") == 5
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        cur = await conn.execute("SELECT reason, detail, device_id, topic, payload FROM dead_letters")
        rows = await cur.fetchall()
    assert {r[0] for r in rows} == {"database_rejected"}
    assert all(r[1].startswith("23514 CheckViolation: ") and "no_73" in r[1] for r in rows)
    assert sorted((r[3], bytes(r[4])) for r in rows) == sorted(refused)  # the whole message, as it came
    assert await count(database_url, "samples") == 500 - 5 * 5  # every sample of every other message


async def _dead(url: str, n: int) -> bool:
    return await count(url, "dead_letters") >= n
