"""A scale-down drains first: an ingester of a share group stopped for good (SIGTERM) unsubscribes, commits
and acknowledges whatever the broker had routed to it, and ends its session, so that nothing is stranded in
a session whose client id never returns. Real ``vitalab ingest`` processes, real Mosquitto, real PostgreSQL.

Whether the broker still has a session is asked of the broker itself: a client connecting with that client id
and ``clean_start=false`` is told whether a session was present (MQTT CONNACK flag)."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import threading
from collections.abc import Iterator

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from ingest.mqtt import SESSION_NEVER_EXPIRES
from simulators.loadgen import LoadPublisher
from tests.conftest import Mosquitto, free_port
from tests.ingest.test_delivery import _scrape
from tests.support.helpers import count, ingester_task, make_settings, metric, running_ingester, wait_until
from tests.support.processes import quiet_ingest_process, reaped_processes
from tests.support.workload import Workload, publish_paced, stored
from vitalab.settings import MqttTarget


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    with reaped_processes() as procs:
        yield procs


def session_present(target: MqttTarget, client_id: str, protocol: str = "5") -> bool:
    """Whether the broker holds a session for ``client_id`` (no client may be connected with it: asking takes
    its session over). Asking keeps it as it was: a session found stays (MQTT 5: expiry "never"; 3.1.1: clean
    session off), none found leaves none behind (MQTT 5: expiry 0 on the way out; 3.1.1: a clean connect)."""
    v5 = protocol == "5"
    present = _connect_once(target, client_id, v5, keep=True)
    if not present:
        _connect_once(target, client_id, v5, keep=False)
    return present


def _connect_once(target: MqttTarget, client_id: str, v5: bool, *, keep: bool) -> bool:
    """Connect with ``client_id`` and disconnect; the CONNACK's session-present flag. ``keep``: resume and
    keep the session; else end it."""
    client = paho.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=paho.MQTTv5 if v5 else paho.MQTTv311,
        clean_session=None if v5 else not keep,
        manual_ack=True,  # what the session sends again on this connection stays unacknowledged: kept
    )
    answer: list[bool] = []
    connected, closed = threading.Event(), threading.Event()

    def on_connect(c: paho.Client, u: object, flags: paho.ConnectFlags, reason: object, p: object) -> None:
        answer.append(flags.session_present)
        connected.set()

    client.on_connect = on_connect
    client.on_disconnect = lambda *_: closed.set()
    props = None
    if v5:
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = SESSION_NEVER_EXPIRES if keep else 0
    resume = False if v5 else paho.MQTT_CLEAN_START_FIRST_ONLY
    client.connect_async(target.host, target.port, clean_start=resume, properties=props)
    client.loop_start()
    try:
        assert connected.wait(10), "no CONNACK"
    finally:
        client.disconnect()
        closed.wait(10)
        client.loop_stop()
    return answer[0]


async def _taken(port: int) -> float:
    return (await _scrape(port)).get("vitalab_ingest_samples_total", 0.0)


async def _at_least(url: str, n: int) -> bool:
    return await count(url, "samples") >= n


@pytest.mark.asyncio
async def test_sigterm_on_one_of_two_ingesters_drains_it_and_ends_its_session(
    mosquitto: Mosquitto, database_url: str, processes: list[subprocess.Popen[bytes]]
) -> None:
    work = Workload.build("drain", devices=20, seconds=500, per_message=5)  # 2,000 messages, 10,000 samples
    later = Workload.build("drain", devices=20, seconds=50, per_message=5, prefix="later")  # 200 messages
    a, port_a, port_b, probe = await _two_ingesters(mosquitto, database_url, processes, "drain")
    # no retries: every publish must find the group's subscribers (one of them is always there)
    with LoadPublisher(mosquitto.target, "pub-drain", retry_unrouted_s=None) as pub:
        sender = publish_paced(pub, work.messages, rate_per_s=400)
        await wait_until(lambda: _both_took(port_a, port_b, 100), timeout_s=30, what="both taking messages")
        duplicates_before = (await _scrape(port_b))["vitalab_ingest_samples_duplicate_total"]  # probes
        a.send_signal(signal.SIGTERM)  # mid-stream: the publisher goes on
        published_at_stop = pub.published
        assert await asyncio.to_thread(a.wait, 60) == 0
        assert published_at_stop < len(work.messages)
        assert not session_present(mosquitto.target, "ingest-a")  # its session is gone from the broker
        await asyncio.to_thread(sender.join)
        # published after the stop: a session of ingest-a left on the broker would be given its share
        # (queued for a client that never returns); all of it must reach ingest-b
        for topic, payload in later.messages:
            pub.publish(topic, payload)
        await asyncio.to_thread(pub.wait_acked, 60)
        total = len(work.expected) + len(later.expected) + 1  # + the probe
        await wait_until(lambda: _at_least(database_url, total), timeout_s=60, what="every sample")
        seen_b = await _scrape(port_b)
    assert pub.unrouted == 0
    assert await count(database_url, "samples") == total  # all rows, once
    assert stored(database_url) == work.expected | later.expected | probe.expected
    # nothing ingest-a had was given to ingest-b again: it had acknowledged everything it was sent
    assert seen_b["vitalab_ingest_redelivered_total"] == 0
    assert seen_b["vitalab_ingest_samples_duplicate_total"] == duplicates_before


async def _two_ingesters(
    mosquitto: Mosquitto, database_url: str, processes: list[subprocess.Popen[bytes]], workload: str
) -> tuple[subprocess.Popen[bytes], int, int, Workload]:
    """Start ingest-a and ingest-b in share group "ingest" and wait until both are subscribed: a probe (the
    same row every time) sent again until each of them has taken one. ingest-a, both metrics ports, the
    probe."""
    port_a, port_b = free_port(), free_port()
    processes.append(
        quiet_ingest_process(database_url, mosquitto.url, "ingest-a", port_a, share_group="ingest")
    )
    processes.append(
        quiet_ingest_process(database_url, mosquitto.url, "ingest-b", port_b, share_group="ingest")
    )
    probe = Workload.build(workload, 1, 1, 1, prefix="probe")
    with LoadPublisher(mosquitto.target, "pub-probe") as prober:

        async def both_subscribed() -> bool:
            prober.publish(*probe.messages[0])
            await asyncio.sleep(0.1)
            return await _both_took(port_a, port_b, 1)

        await wait_until(both_subscribed, timeout_s=30, what="both ingesters subscribed")
        await asyncio.to_thread(prober.wait_acked)
    return processes[0], port_a, port_b, probe


async def _both_took(port_a: int, port_b: int, n: int) -> bool:
    return await _taken(port_a) >= n and await _taken(port_b) >= n


@pytest.mark.asyncio
@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
async def test_a_drained_stop_ends_the_session_on_either_protocol(
    mosquitto: Mosquitto, database_url: str, protocol: str
) -> None:
    work = Workload.build("end", devices=4, seconds=100, per_message=5)  # 80 messages, 400 samples
    settings = make_settings(
        ingest_client_id="ingest-end", ingest_share_group="ingest", mqtt_protocol=protocol
    )
    async with ingester_task(settings, mosquitto.target, database_url) as (ingester, _):
        with LoadPublisher(mosquitto.target, "pub-end", protocol=protocol) as pub:  # type: ignore[arg-type]
            for t, p in work.messages:
                pub.publish(t, p)
            await asyncio.to_thread(pub.wait_acked)
        await wait_until(lambda: _at_least(database_url, len(work.expected)), what="every sample")
    assert ingester.session_ended
    assert ingester.holding == 0
    assert not session_present(mosquitto.target, "ingest-end", protocol)
    assert stored(database_url) == work.expected


@pytest.mark.asyncio
async def test_a_drain_that_cannot_commit_keeps_the_session_and_its_messages(
    mosquitto: Mosquitto, database_url: str
) -> None:
    """Stopped while the database is down, the ingester cannot commit what it holds within the drain time:
    it keeps its session, and the same client id, back with a database, is sent all of it again."""
    work = Workload.build("keep", devices=2, seconds=20, per_message=5)  # 8 messages, 40 samples
    nowhere = f"postgresql://postgres@127.0.0.1:{free_port()}/nothing"  # nothing listens there
    down = make_settings(ingest_client_id="ingest-keep", ingest_drain_timeout_s=1.0)
    async with ingester_task(down, mosquitto.target, nowhere) as (first, _):
        with LoadPublisher(mosquitto.target, "pub-keep") as pub:
            for t, p in work.messages:
                pub.publish(t, p)
            await asyncio.to_thread(pub.wait_acked)
        await wait_until(lambda: _is(first.holding == len(work.messages)), what="every message held")
        await wait_until(lambda: _is(not first.db_ok), what="the database found down")
    assert not first.session_ended
    assert first.committed_batches == 0
    assert session_present(mosquitto.target, "ingest-keep")
    async with running_ingester(
        make_settings(ingest_client_id="ingest-keep"), mosquitto.target, database_url
    ) as again:
        await wait_until(lambda: _at_least(database_url, len(work.expected)), what="every sample")
        await wait_until(
            lambda: _is(metric(again, "vitalab_ingest_redelivered_total") >= 8), what="redelivered"
        )
    assert stored(database_url) == work.expected


async def _is(value: bool) -> bool:
    return value


@pytest.mark.asyncio
async def test_a_drained_stop_acknowledges_every_commit_to_the_senders_before_its_session_ends(
    mosquitto: Mosquitto, database_url: str, processes: list[subprocess.Popen[bytes]]
) -> None:
    """The two features meet: the senders ask for commit acks (``"ack": true``) and one of two ingesters is
    scaled down mid-stream. Every message must be stored once and covered by a commit ack that reached its
    sender (none left to be resent), including those the stopping ingester committed while draining."""
    work = Workload.build("dack", devices=20, seconds=500, per_message=5, ack=True)  # 2,000 messages
    a, port_a, port_b, probe = await _two_ingesters(mosquitto, database_url, processes, "dack")
    # a device that keeps each message until a commit ack names it; it would resend only after 10 minutes,
    # so any resend (or a wait for one) means a message was left unacknowledged
    with LoadPublisher(
        mosquitto.target, "pub-dack", retry_unrouted_s=None, commit_acks=True, ack_timeout_s=600
    ) as pub:
        sender = publish_paced(pub, work.messages, rate_per_s=400)
        await wait_until(lambda: _both_took(port_a, port_b, 100), timeout_s=30, what="both taking messages")
        a.send_signal(signal.SIGTERM)  # mid-stream: the publisher goes on
        published_at_stop = pub.published
        assert await asyncio.to_thread(a.wait, 60) == 0
        assert published_at_stop < len(work.messages)
        assert not session_present(mosquitto.target, "ingest-a")  # its session is gone from the broker
        await asyncio.to_thread(sender.join)
        await asyncio.to_thread(pub.wait_acked, 120)  # a commit ack for every message published
        assert pub.acked == pub.published == len(work.messages)
        assert pub.resent_unacked == 0
        assert pub.awaiting_commit == 0
        seen_a_stopped = await _acks_counted(port_b)
    assert pub.unrouted == 0
    assert await count(database_url, "samples") == len(work.expected) + 1  # all rows, once (+ the probe)
    assert stored(database_url) == work.expected | probe.expected
    assert seen_a_stopped > 0  # ingest-b acknowledged its share too


async def _acks_counted(port: int) -> float:
    return (await _scrape(port)).get("vitalab_ingest_commit_acks_total", 0.0)
