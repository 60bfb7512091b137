"""The ingester: MQTT (QoS 1, ack after commit) → batches → PostgreSQL/TimescaleDB, one row per sample."""

from ingest.batch import Batch, Router
from ingest.service import IngestConfig, Ingester, open_ingester, subscriptions

__all__ = ["Batch", "IngestConfig", "Ingester", "Router", "open_ingester", "subscriptions"]
