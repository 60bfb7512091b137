"""Erasure of a participant: everything attributable to them goes, in one transaction.

* their profile, enrolments and consent history (the append-only trigger lets a DELETE through only inside
  an erasure: ``SET LOCAL vitalab.erasure = 'on'``), sessions, daily series, check-ins and device
  assignments, what the analytics job set aside about them, and ``export_contents`` rows;
* their own devices (kinds in :data:`api.queries.erasure.PERSONAL_KINDS`: straps): the samples, RR
  intervals, device events, dead letters, sessions and per-device rollups of each while it was assigned to
  them. Machines' samples stay (the gym's data); their link to the participant (check-ins, sessions) goes;
* a tombstone in the audit log, in the same transaction: who erased which participant id and how many rows,
  nothing of the profile.

The report lists the earlier exports that contained the participant (from ``export_contents``, read before
it is cleared): their files are outside the database and keep the participant's rows under the study's
pseudonym.

On TimescaleDB the same statements run on the hypertables, compressed chunks included (DML on compressed
chunks is supported since TimescaleDB 2.11; a DELETE filtered on the ``device_id`` segment-by column
decompresses only that device's segments). After the commit, the continuous aggregates (``samples_1m``, then
``site_samples_1h`` built on it) are re-materialised over the personal devices' windows, so no per-minute
aggregate of an erased strap outlives its samples (TimescaleDB refuses that refresh inside a transaction).
If the refresh fails, the erasure stands and the report says what is pending.
"""

from __future__ import annotations

import logging
from datetime import datetime
from uuid import UUID

import psycopg
from psycopg import AsyncConnection

from api import audit
from api.errors import not_found
from api.queries import erasure as q
from api.queries.system import has_timescale
from api.research_models import ErasedExport, ErasureReport
from api.security import Caller

ACTION = "erase participant"
logger = logging.getLogger(__name__)


async def erase(
    conn: AsyncConnection,
    participant_id: UUID,
    *,
    caller: Caller,
    now: datetime,
    field: str = "path.participant_id",
) -> ErasureReport:
    """Erase the participant (404 naming ``field`` for an unknown one) and record the tombstone."""
    async with conn.transaction():
        if not await q.lock_participant(conn, participant_id):
            raise not_found("participant", str(participant_id), field=field)
        windows = await q.personal_windows(conn, participant_id)
        exports = await q.exports_with(conn, participant_id)
        counts: dict[str, int] = {}
        for window in windows:
            await q.delete_in_window(conn, window, counts)
        await q.delete_rows_of(conn, participant_id, counts)
        removed = sum(counts.values())
        await audit.record(
            conn,
            caller,
            ACTION,
            f"participant {participant_id}",
            f"erased: {removed} rows in {sum(1 for n in counts.values() if n)} tables; "
            f"{len(exports)} earlier exports held their data",
            now,
            None,
        )
    refreshed, pending = await _refresh_aggregates(conn, windows)
    return ErasureReport(
        participant_id=participant_id,
        erased_at=now,
        erased_by=caller.key_id or caller.subject or "unknown",
        rows=dict(sorted(counts.items())),
        personal_devices=sorted({w.device_id for w in windows}),
        exports=[
            ErasedExport(
                export_id=e.export_id,
                study_id=e.study_id,
                requested_by=e.requested_by,
                requested_at=e.requested_at,
                status=e.status,
                finished_at=e.finished_at,
            )
            for e in exports
        ],
        aggregates_refreshed=refreshed,
        aggregates_pending=pending,
    )


async def _refresh_aggregates(conn: AsyncConnection, windows: list[q.Window]) -> tuple[list[str], str | None]:
    if not windows or not await has_timescale(conn):
        return [], None
    autocommit = conn.autocommit
    try:
        if not autocommit:
            await conn.commit()  # close the read's implicit transaction
            await conn.set_autocommit(True)
        await q.refresh_aggregates(conn, windows)
    except psycopg.Error as exc:
        logger.error("erasure committed, but refreshing the continuous aggregates failed: %s", exc)
        return [], (
            f"{exc}; run refresh_continuous_aggregate on "
            + ", ".join(v for v, _ in q.CONTINUOUS_AGGREGATES)
            + " over the devices' windows"
        )
    finally:
        if not autocommit and not conn.broken:
            await conn.set_autocommit(False)
    return [v for v, _ in q.CONTINUOUS_AGGREGATES], None
