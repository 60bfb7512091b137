"""Contract validation for integrators: the ingester's own verdict (:func:`ingest.verdict.judge`) on one
message, with the limits of this deployment's settings and what the ingester knows of the device it names:
its site (a device belongs to one site: ``site_mismatch``) and, under the ``quarantine`` policy, whether it
is taken at all. The database is only asked for messages of a device (telemetry, state, meta)."""

from __future__ import annotations

from datetime import datetime

from psycopg_pool import AsyncConnectionPool

from api.queries import contract as q
from ingest.batch import IDENTITY_CHECKED
from ingest.service import router_from_settings
from ingest.verdict import Verdict, judge, received_by_ingester
from vitalab.settings import Settings
from vitalab.wire import WireError, parse_topic


def _checked_device(topic: str) -> str | None:
    """The device of a topic whose messages the ingester checks against what it knows of the device."""
    if not received_by_ingester(topic):
        return None
    try:
        parsed = parse_topic(topic)
    except WireError:
        return None
    return parsed.source if parsed.kind in IDENTITY_CHECKED else None


async def validate(
    pool: AsyncConnectionPool, settings: Settings, topic: str, payload: bytes, now: datetime
) -> Verdict:
    """What the ingester would do with ``payload`` on ``topic`` received at ``now``."""
    known: set[str] | None = None
    sites: dict[str, str] | None = None
    device = _checked_device(topic)
    if device is not None:
        async with pool.connection() as conn:
            stored = await q.device_registry(conn, device)
        sites = {} if stored is None else {device: stored.site_id}
        if settings.ingest_unknown_devices == "quarantine":
            known = {device} if stored is not None and stored.accepted else set()
    return judge(
        topic,
        payload,
        now=now,
        router=router_from_settings(settings),
        known_devices=known,
        device_sites=sites,
    )
