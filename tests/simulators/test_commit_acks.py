"""A device that speaks MQTT itself and the contract's commit acknowledgements (the simulator's load
publisher, ``LoadPublisher(commit_acks=True)``): a broker crash with a queued backlog loses nothing it sent.
Real processes: Mosquitto killed with SIGKILL and restarted, `vitalab ingest`; real PostgreSQL."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from simulators.loadgen import LoadPublisher
from tests.conftest import Mosquitto
from tests.support.processes import IngestProcess
from tests.support.workload import Workload, stored
from vitalab.db import migrate

ACK_TIMEOUT_S = 2.0


def _until(check: Callable[[], object], what: str, timeout_s: float = 60.0) -> None:
    t0 = time.monotonic()
    while not check():
        if time.monotonic() - t0 > timeout_s:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.05)


@pytest.fixture
def ingester(mosquitto: Mosquitto, database_url: str, tmp_path: Path) -> Iterator[IngestProcess]:
    migrate(database_url)
    # a stop keeps the session (a restart, not a scale-down: no drain), so the broker queues for it
    process = IngestProcess(
        database_url, mosquitto.url, "ingest-dev", tmp_path / "ingest.log", {"INGEST_DRAIN_TIMEOUT_S": "0"}
    )
    yield process
    process.kill()


def _scenario(mosquitto: Mosquitto, database_url: str, ingester: IngestProcess) -> LoadPublisher:
    probe = Workload.build("gym", devices=1, seconds=1, per_message=1, prefix="probe", ack=True)
    backlog = Workload.build(
        "gym", devices=4, seconds=500, per_message=5, ack=True
    )  # 400 messages, 2,000 samples
    ingester.start()
    with LoadPublisher(mosquitto.target, "dev-acks", commit_acks=True, ack_timeout_s=ACK_TIMEOUT_S) as pub:
        for topic, payload in probe.messages:
            pub.publish(topic, payload)
        pub.wait_acked(60)  # stored and acknowledged: the ingester is subscribed
        ingester.stop()  # its persistent session stays and queues what comes
        for topic, payload in backlog.messages:
            pub.publish(topic, payload)
        _until(lambda: pub.in_flight == 0 and pub.awaiting_commit == 400, "PUBACKs for the backlog")
        assert stored(database_url) == probe.expected  # the backlog sits in the broker's memory
        mosquitto.kill()  # ... and is gone
        mosquitto.start()
        ingester.start()
        pub.wait_acked(120)
    assert stored(database_url) == probe.expected | backlog.expected
    return pub


def test_direct_device_with_commit_acks_survives_a_broker_kill_with_a_queued_backlog(
    mosquitto: Mosquitto, database_url: str, ingester: IngestProcess
) -> None:
    mosquitto.stop()
    mosquitto.extra_config = "autosave_interval 3600\n"  # what the broker holds is only in its memory
    mosquitto.start()
    pub = _scenario(mosquitto, database_url, ingester)
    assert pub.resent_unacked >= 400  # the broker had lost the whole backlog: all of it was sent again
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT count(*), count(DISTINCT (device_id, t)) FROM samples").fetchone()
    assert row == (2001, 2001)
