"""The statements of a participant's erasure (:mod:`api.services.erasure` runs them in one transaction).

Every statement names its table and returns the rows it removed; the windows of the participant's own straps
bound what is deleted from the device tables (samples, RR intervals, device events, dead letters and the
per-device rollups of those straps)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Final
from uuid import UUID

from psycopg import AsyncConnection, sql

from api.queries import fetch_all

PERSONAL_KINDS: Final = ("hr_strap",)
"""Device kinds worn by a person: while a participant has one assigned (checked out, paired with them),
everything it sends is theirs. Machines (bikes, treadmills, ...) belong to the gym: their samples stay, only
the participant's link to them (check-ins, sessions) goes."""


@dataclass(frozen=True, slots=True)
class Window:
    """A personal device assigned to the participant over ``[t_from, t_to)`` (``t_to`` None: still)."""

    device_id: str
    t_from: datetime
    t_to: datetime | None


@dataclass(frozen=True, slots=True)
class ExportRef:
    export_id: UUID
    study_id: str
    requested_by: str
    requested_at: datetime
    status: str
    finished_at: datetime | None


async def lock_participant(conn: AsyncConnection, participant_id: UUID) -> bool:
    cur = await conn.execute(
        "SELECT 1 FROM participants WHERE participant_id = %s FOR UPDATE", (participant_id,)
    )
    return await cur.fetchone() is not None


async def personal_windows(conn: AsyncConnection, participant_id: UUID) -> list[Window]:
    return await fetch_all(
        conn,
        Window,
        sql.SQL(
            "SELECT a.device_id, a.started_at AS t_from, a.ended_at AS t_to FROM device_assignments a "
            "JOIN devices d USING (device_id) WHERE a.participant_id = %s AND d.kind = ANY (%s) "
            "ORDER BY a.device_id, a.started_at"
        ),
        (participant_id, list(PERSONAL_KINDS)),
    )


async def exports_with(conn: AsyncConnection, participant_id: UUID) -> list[ExportRef]:
    """The exports whose files hold data of the participant (``export_contents``), oldest first."""
    return await fetch_all(
        conn,
        ExportRef,
        sql.SQL(
            "SELECT j.export_id, j.study_id, j.requested_by, j.requested_at, j.status, j.finished_at "
            "FROM export_contents c JOIN export_jobs j USING (export_id) WHERE c.participant_id = %s "
            "ORDER BY j.requested_at, j.export_id"
        ),
        (participant_id,),
    )


_UNTIL: Final = sql.SQL("coalesce(%(t_to)s::timestamptz, 'infinity')")
_IN_WINDOW: Final = {
    "samples": sql.SQL("t >= %(t_from)s AND t < {}").format(_UNTIL),
    "rr_intervals": sql.SQL("t >= %(t_from)s AND t < {}").format(_UNTIL),
    "device_events": sql.SQL("t >= %(t_from)s AND t < {}").format(_UNTIL),
    "dead_letters": sql.SQL("received_at >= %(t_from)s AND received_at < {}").format(_UNTIL),
    "device_hourly": sql.SQL("hour + interval '1 hour' > %(t_from)s AND hour < {}").format(_UNTIL),
    "device_quality_daily": sql.SQL(
        "day >= (%(t_from)s AT TIME ZONE 'UTC')::date AND day <= ({} AT TIME ZONE 'UTC')::date"
    ).format(_UNTIL),
    "ingest_device_stats": sql.SQL(
        "day >= (%(t_from)s AT TIME ZONE 'UTC')::date AND day <= ({} AT TIME ZONE 'UTC')::date"
    ).format(_UNTIL),
}
"""What a personal device sent inside a window (by device time; dead letters by their receipt) and its
per-device rollups overlapping it (hours, UTC days)."""
_SESSIONS_IN_WINDOW: Final = sql.SQL(
    "DELETE FROM sessions WHERE %(device_id)s = ANY (device_ids) AND ended_at > %(t_from)s "
    "AND started_at < {}"
).format(_UNTIL)


async def delete_in_window(conn: AsyncConnection, window: Window, counts: dict[str, int]) -> None:
    """Everything the personal device sent inside the window, its rollups and the sessions it took part in
    (attributed to the participant or not) overlapping it."""
    values = {"device_id": window.device_id, "t_from": window.t_from, "t_to": window.t_to}
    for table, inside in _IN_WINDOW.items():
        query = sql.SQL("DELETE FROM {} WHERE device_id = %(device_id)s AND {}").format(
            sql.Identifier(table), inside
        )
        cur = await conn.execute(query, values)
        counts[table] = counts.get(table, 0) + max(cur.rowcount, 0)
    cur = await conn.execute(_SESSIONS_IN_WINDOW, values)
    counts["sessions"] = counts.get("sessions", 0) + max(cur.rowcount, 0)


_BY_PARTICIPANT: Final = (
    "sessions",
    "participant_daily",
    "study_consents",
    "study_enrolments",
    "device_assignments",
    "export_contents",
)
"""Tables with a ``participant_id``, children before parents (``participants`` itself goes last)."""


async def delete_rows_of(conn: AsyncConnection, participant_id: UUID, counts: dict[str, int]) -> None:
    """The participant's rows in every table naming them, then the profile. The consent history is
    append-only: its trigger lets DELETE through only in a transaction that set ``vitalab.erasure``."""
    await conn.execute("SET LOCAL vitalab.erasure = 'on'")
    for table in _BY_PARTICIPANT:
        cur = await conn.execute(
            sql.SQL("DELETE FROM {} WHERE participant_id = %s").format(sql.Identifier(table)),
            (participant_id,),
        )
        counts[table] = counts.get(table, 0) + max(cur.rowcount, 0)
    # work the analytics job set aside for the participant (its row key or detail names them)
    cur = await conn.execute(
        "DELETE FROM analytics_rejects WHERE row_key = %(id)s OR strpos(detail::text, %(id)s) > 0",
        {"id": str(participant_id)},
    )
    counts["analytics_rejects"] = max(cur.rowcount, 0)
    cur = await conn.execute("DELETE FROM participants WHERE participant_id = %s", (participant_id,))
    counts["participants"] = max(cur.rowcount, 0)


CONTINUOUS_AGGREGATES: Final = (("samples_1m", "1 minute"), ("site_samples_1h", "1 hour"))
"""TimescaleDB's continuous aggregates over ``samples``, finest first (the second is built on the first)."""


async def refresh_aggregates(conn: AsyncConnection, windows: list[Window]) -> None:
    """Re-materialise the continuous aggregates over each window, so that no per-minute or per-hour
    aggregate of an erased strap's samples outlives them. Runs outside a transaction (TimescaleDB refuses
    ``refresh_continuous_aggregate`` inside one): the connection must be in autocommit mode."""
    for view, width in CONTINUOUS_AGGREGATES:
        for w in windows:
            # whole buckets around the window (an open window: to the end)
            await conn.execute(
                sql.SQL(
                    "CALL refresh_continuous_aggregate({view}, time_bucket({width}::interval, %(t_from)s), "
                    "time_bucket({width}::interval, %(t_to)s::timestamptz) + {width}::interval)"
                ).format(view=sql.Literal(view), width=sql.Literal(width)),
                {"t_from": w.t_from, "t_to": w.t_to},
            )
