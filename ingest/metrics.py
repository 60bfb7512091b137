"""Prometheus metrics of one ingester (own registry, so several can live in one process)."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


@dataclass(frozen=True)
class IngestMetrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        s = object.__setattr__
        s(self, "messages", Counter("vitalab_ingest_messages", "MQTT messages taken", ["kind"], registry=r))
        s(self, "samples", Counter("vitalab_ingest_samples", "valid samples received", registry=r))
        s(self, "inserted", Counter("vitalab_ingest_samples_inserted", "new sample rows", registry=r))
        s(
            self,
            "duplicates",
            Counter("vitalab_ingest_samples_duplicate", "samples already stored", registry=r),
        )
        s(
            self,
            "dead_letters",
            Counter("vitalab_ingest_dead_letters", "dead letters", ["reason"], registry=r),
        )
        s(
            self,
            "redelivered",
            Counter(
                "vitalab_ingest_redelivered",
                "messages the broker sent again (MQTT DUP flag: it had not received our PUBACK)",
                registry=r,
            ),
        )
        s(self, "batches", Counter("vitalab_ingest_batches", "committed batches", registry=r))
        s(
            self,
            "db_errors",
            Counter("vitalab_ingest_db_errors", "failed connections or writes (retried)", registry=r),
        )
        s(
            self,
            "commit_seconds",
            Histogram(
                "vitalab_ingest_commit_seconds",
                "batch write + commit time",
                buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
                registry=r,
            ),
        )
        s(self, "acks", Counter("vitalab_ingest_commit_acks", "commit acks published", registry=r))
        s(
            self,
            "ack_failures",
            Counter("vitalab_ingest_commit_ack_failures", "commit acks not confirmed by the bus", registry=r),
        )
        s(self, "queue_depth", Gauge("vitalab_ingest_queue_depth", "received, not yet batched", registry=r))
        s(
            self,
            "inflight_bytes",
            Gauge(
                "vitalab_ingest_inflight_bytes",
                "payload bytes received, not yet acknowledged (VITALAB_INGEST_MAX_INFLIGHT_BYTES bounds it)",
                registry=r,
            ),
        )
        s(
            self,
            "lag_seconds",
            Gauge("vitalab_ingest_lag_seconds", "commit time - newest sample time", registry=r),
        )

    acks: Counter = field(init=False)
    ack_failures: Counter = field(init=False)
    messages: Counter = field(init=False)
    samples: Counter = field(init=False)
    inserted: Counter = field(init=False)
    duplicates: Counter = field(init=False)
    redelivered: Counter = field(init=False)
    dead_letters: Counter = field(init=False)
    batches: Counter = field(init=False)
    db_errors: Counter = field(init=False)
    commit_seconds: Histogram = field(init=False)
    queue_depth: Gauge = field(init=False)
    inflight_bytes: Gauge = field(init=False)
    lag_seconds: Gauge = field(init=False)
