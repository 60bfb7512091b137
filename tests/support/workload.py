"""A known telemetry workload: what was sent, so tests can check that every sample was stored once."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from simulators.loadgen import LoadPublisher
from vitalab.wire import Sample, TelemetryMessage, encode, telemetry_topic


@dataclass(frozen=True)
class Workload:
    messages: list[tuple[str, bytes]]
    expected: set[tuple[str, datetime]]

    @classmethod
    def build(
        cls, site: str, devices: int, seconds: int, per_message: int, prefix: str = "dev", ack: bool = False
    ) -> Workload:
        """``ack``: the messages ask for commit acknowledgements (a device speaking them itself)."""
        start = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=seconds + 60)
        messages: list[tuple[str, bytes]] = []
        expected: set[tuple[str, datetime]] = set()
        for first in range(0, seconds, per_message):
            for d in range(devices):
                dev = f"{prefix}-{d:03d}"
                samples = [
                    Sample(t=start + timedelta(seconds=s), hr_bpm=60 + (s % 100), power_w=float(d))
                    for s in range(first, min(first + per_message, seconds))
                ]
                expected.update((dev, s.t) for s in samples)
                msg = TelemetryMessage(v=1, device=dev, seq=first // per_message, samples=samples, ack=ack)
                messages.append((telemetry_topic(site, dev), encode(msg)))
        return cls(messages, expected)


def publish_paced(
    publisher: LoadPublisher, messages: list[tuple[str, bytes]], rate_per_s: float
) -> threading.Thread:
    """Publish in a background thread at about ``rate_per_s`` messages per second."""

    def run() -> None:
        t0 = time.monotonic()
        for i, (topic, payload) in enumerate(messages):
            publisher.publish(topic, payload)
            ahead = t0 + i / rate_per_s - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def stored(url: str) -> set[tuple[str, datetime]]:
    import psycopg

    with psycopg.connect(url) as conn:
        return {(d, t) for d, t in conn.execute("SELECT device_id, t FROM samples")}
