"""Participants and their daily series (``participants``, ``participant_daily``)."""

from __future__ import annotations

from datetime import date
from typing import Any
from uuid import UUID

from psycopg import AsyncConnection, sql

from api.models import ParticipantDay, ParticipantIn, ParticipantOut
from api.queries import cols, exists, fetch_all, fetch_one
from vitalab.db.columns import DAILY_VALUES

PARTICIPANT_COLS = (
    "participant_id",
    "site_id",
    "external_ref",
    "birth_year",
    "sex",
    "weight_kg",
    "hr_rest_bpm",
    "hr_max_bpm",
    "consent_given_at",
    "consent_withdrawn_at",
    "created_at",
)
_PROFILE_COLS = (
    "site_id",
    "external_ref",
    "birth_year",
    "sex",
    "weight_kg",
    "hr_rest_bpm",
    "hr_max_bpm",
    "consent_given_at",
)
DAY_COLS = ("day", *DAILY_VALUES)


async def known(conn: AsyncConnection, participant_id: UUID) -> bool:
    return await exists(
        conn, sql.SQL("SELECT 1 FROM participants WHERE participant_id = %s"), (participant_id,)
    )


async def site_of(conn: AsyncConnection, participant_id: UUID) -> str | None:
    cur = await conn.execute("SELECT site_id FROM participants WHERE participant_id = %s", (participant_id,))
    row = await cur.fetchone()
    return None if row is None else str(row[0])


async def insert_or_find(conn: AsyncConnection, body: ParticipantIn) -> tuple[ParticipantOut | None, bool]:
    """Insert the participant; with an ``external_ref`` already registered at the site, the stored one.
    Returns ``(participant, created)``; ``(None, False)`` if the stored one vanished in between."""
    values: dict[str, Any] = body.model_dump()
    insert = sql.SQL(
        "INSERT INTO participants ({}) VALUES ({}) "
        "ON CONFLICT (site_id, external_ref) DO NOTHING RETURNING {}"
    ).format(
        cols(_PROFILE_COLS),
        sql.SQL(", ").join(sql.Placeholder(c) for c in _PROFILE_COLS),
        cols(PARTICIPANT_COLS),
    )
    created = await fetch_one(conn, ParticipantOut, insert, values)
    if created is not None:
        return created, True
    select = sql.SQL(
        "SELECT {} FROM participants WHERE site_id = %(site_id)s AND external_ref = %(external_ref)s"
    ).format(cols(PARTICIPANT_COLS))
    return await fetch_one(conn, ParticipantOut, select, values), False


async def get_participant(conn: AsyncConnection, participant_id: UUID) -> ParticipantOut | None:
    query = sql.SQL("SELECT {} FROM participants WHERE participant_id = %s").format(cols(PARTICIPANT_COLS))
    return await fetch_one(conn, ParticipantOut, query, (participant_id,))


async def daily(
    conn: AsyncConnection, participant_id: UUID, since: date | None, until: date | None
) -> list[ParticipantDay]:
    """One row per site-local day in ``[since, until]`` (at most one per day: a bounded list)."""
    query = sql.SQL(
        "SELECT {} FROM participant_daily WHERE participant_id = %(p)s "
        "AND (%(since)s::date IS NULL OR day >= %(since)s) AND (%(until)s::date IS NULL OR day <= %(until)s) "
        "ORDER BY day"
    ).format(cols(DAY_COLS))
    return await fetch_all(conn, ParticipantDay, query, {"p": participant_id, "since": since, "until": until})
