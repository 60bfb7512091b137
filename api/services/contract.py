"""Contract validation for integrators: the ingester's own verdict (:func:`ingest.verdict.judge`) on one
message, with the limits of this deployment's settings and, under the ``quarantine`` policy, the device
registry the ingester consults. The database is only asked in that case: with the ``register`` policy a
validation needs no database at all."""

from __future__ import annotations

from datetime import datetime

from psycopg_pool import AsyncConnectionPool

from api.queries import contract as q
from ingest.service import router_from_settings
from ingest.verdict import Verdict, judge, received_by_ingester
from vitalab.settings import Settings
from vitalab.wire import TopicKind, WireError, parse_topic


def _telemetry_device(topic: str) -> str | None:
    if not received_by_ingester(topic):
        return None
    try:
        parsed = parse_topic(topic)
    except WireError:
        return None
    return parsed.source if parsed.kind is TopicKind.TELEMETRY else None


async def validate(
    pool: AsyncConnectionPool, settings: Settings, topic: str, payload: bytes, now: datetime
) -> Verdict:
    """What the ingester would do with ``payload`` on ``topic`` received at ``now``."""
    known: set[str] | None = None
    if settings.ingest_unknown_devices == "quarantine":
        device = _telemetry_device(topic)
        if device is not None:
            async with pool.connection() as conn:
                known = {device} if await q.accepted_device(conn, device) else set()
    return judge(topic, payload, now=now, router=router_from_settings(settings), known_devices=known)
