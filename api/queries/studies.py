"""Studies, their sites and keys, enrolments and the consent history (``studies``, ``study_sites``,
``study_keys``, ``study_enrolments``, ``study_consents``). The rules are in :mod:`api.services.studies`."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any
from uuid import UUID

from psycopg import AsyncConnection, sql

from api.exports.pseudonyms import Pads, sql_participant
from api.pagination import Cursor, Keyset, Page
from api.queries import fetch_all, fetch_one, fetch_page
from api.research_models import ConsentOut, ConsentRecordOut, EnrolmentOut, StudyOut

KEYSET = Keyset(("study_id",), (str,))
ENROLMENT_KEYSET = Keyset(("pseudonym",), (str,))
_STUDY = sql.SQL(
    "SELECT s.study_id, s.title, s.description, s.principal_investigator, s.ethics_ref, s.starts_on, "
    "s.ends_on, "
    "coalesce((SELECT array_agg(ss.site_id ORDER BY ss.site_id) FROM study_sites ss "
    "WHERE ss.study_id = s.study_id), '{}') AS sites, "
    "s.scopes, s.status, s.created_at, s.updated_at FROM studies s"
)
_CONSENT_COLS = sql.SQL(
    "id, study_id, participant_id, consent_version, scopes, given_at, withdrawn_at, recorded_at, recorded_by"
)
STUDY_FIELDS = (
    "title",
    "description",
    "principal_investigator",
    "ethics_ref",
    "starts_on",
    "ends_on",
    "scopes",
    "status",
)


async def missing_sites(conn: AsyncConnection, sites: Sequence[str]) -> list[str]:
    cur = await conn.execute(
        "SELECT s FROM unnest(%s::text[]) AS s WHERE NOT EXISTS (SELECT 1 FROM sites WHERE site_id = s) "
        "ORDER BY s",
        (list(sites),),
    )
    return [str(r[0]) for r in await cur.fetchall()]


async def insert_study(conn: AsyncConnection, values: dict[str, Any], key: bytes, now: datetime) -> bool:
    """Insert the study, its sites and key; False if the id is taken."""
    cur = await conn.execute(
        "INSERT INTO studies (study_id, title, description, principal_investigator, ethics_ref, starts_on, "
        "ends_on, scopes, status, created_at) VALUES (%(study_id)s, %(title)s, %(description)s, "
        "%(principal_investigator)s, %(ethics_ref)s, %(starts_on)s, %(ends_on)s, %(scopes)s, %(status)s, "
        "%(now)s) ON CONFLICT (study_id) DO NOTHING",
        {**values, "now": now},
    )
    if cur.rowcount != 1:
        return False
    await set_sites(conn, values["study_id"], values["sites"])
    await conn.execute(
        "INSERT INTO study_keys (study_id, hmac_key, created_at) VALUES (%s, %s, %s)",
        (values["study_id"], key, now),
    )
    return True


async def set_sites(conn: AsyncConnection, study_id: str, sites: Sequence[str]) -> None:
    await conn.execute(
        "DELETE FROM study_sites WHERE study_id = %s AND site_id <> ALL (%s::text[])", (study_id, list(sites))
    )
    await conn.execute(
        "INSERT INTO study_sites (study_id, site_id) SELECT %s, unnest(%s::text[]) ON CONFLICT DO NOTHING",
        (study_id, list(sites)),
    )


async def get_study(conn: AsyncConnection, study_id: str, *, lock: bool = False) -> StudyOut | None:
    query = sql.SQL("{} WHERE s.study_id = %s{}").format(_STUDY, sql.SQL(" FOR UPDATE OF s" if lock else ""))
    return await fetch_one(conn, StudyOut, query, (study_id,))


async def list_studies(
    conn: AsyncConnection, only: frozenset[str] | None, cursor: Cursor, limit: int
) -> Page[StudyOut]:
    select = sql.SQL("SELECT * FROM ({}) st").format(_STUDY)
    where = sql.SQL("%(only)s::text[] IS NULL OR study_id = ANY (%(only)s::text[])")
    params = {"only": None if only is None else sorted(only)}
    return await fetch_page(
        conn, StudyOut, select, where, params, KEYSET, cursor, limit, lambda s: (s.study_id,)
    )


async def update_study(conn: AsyncConnection, study_id: str, changes: dict[str, Any], now: datetime) -> None:
    sets: list[sql.Composable] = [
        sql.SQL("{} = {}").format(sql.Identifier(k), sql.Placeholder(k)) for k in changes
    ]
    sets.append(sql.SQL("updated_at = %(now)s"))
    query = sql.SQL("UPDATE studies SET {} WHERE study_id = %(study_id)s").format(sql.SQL(", ").join(sets))
    await conn.execute(query, {**changes, "now": now, "study_id": study_id})


async def delete_study(conn: AsyncConnection, study_id: str) -> None:
    await conn.execute("DELETE FROM studies WHERE study_id = %s", (study_id,))


async def has_enrolments(conn: AsyncConnection, study_id: str) -> bool:
    cur = await conn.execute(
        "SELECT EXISTS (SELECT 1 FROM study_enrolments WHERE study_id = %s)", (study_id,)
    )
    row = await cur.fetchone()
    return bool(row and row[0])


async def has_exports(conn: AsyncConnection, study_id: str) -> bool:
    cur = await conn.execute("SELECT EXISTS (SELECT 1 FROM export_jobs WHERE study_id = %s)", (study_id,))
    row = await cur.fetchone()
    return bool(row and row[0])


async def key_of(conn: AsyncConnection, study_id: str) -> bytes | None:
    cur = await conn.execute("SELECT hmac_key FROM study_keys WHERE study_id = %s", (study_id,))
    row = await cur.fetchone()
    return None if row is None else bytes(row[0])


# --- enrolments and consent ---------------------------------------------------------------------------


async def lock_enrolment(conn: AsyncConnection, study_id: str, participant_id: UUID) -> bool:
    """Whether the participant is enrolled; their enrolment row locked (serialises their consent records)."""
    cur = await conn.execute(
        "SELECT 1 FROM study_enrolments WHERE study_id = %s AND participant_id = %s FOR UPDATE",
        (study_id, participant_id),
    )
    return await cur.fetchone() is not None


async def insert_enrolment(
    conn: AsyncConnection, study_id: str, participant_id: UUID, at: datetime, by: str
) -> bool:
    cur = await conn.execute(
        "INSERT INTO study_enrolments (study_id, participant_id, enrolled_at, enrolled_by) "
        "VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING",
        (study_id, participant_id, at, by),
    )
    return cur.rowcount == 1


async def insert_consent(
    conn: AsyncConnection,
    study_id: str,
    participant_id: UUID,
    *,
    consent_version: str | None,
    scopes: Sequence[str],
    given_at: datetime | None,
    withdrawn_at: datetime | None,
    recorded_at: datetime,
    recorded_by: str,
) -> ConsentOut:
    query = sql.SQL(
        "INSERT INTO study_consents (study_id, participant_id, consent_version, scopes, given_at, "
        "withdrawn_at, recorded_at, recorded_by) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) RETURNING {}"
    ).format(_CONSENT_COLS)
    row = await fetch_one(
        conn,
        ConsentOut,
        query,
        (
            study_id,
            participant_id,
            consent_version,
            list(scopes),
            given_at,
            withdrawn_at,
            recorded_at,
            recorded_by,
        ),
    )
    assert row is not None
    return row


async def consents(conn: AsyncConnection, study_id: str, participant_id: UUID) -> list[ConsentOut]:
    """The participant's consent records in the order they take effect."""
    query = sql.SQL(
        "SELECT {} FROM study_consents WHERE study_id = %s AND participant_id = %s "
        "ORDER BY coalesce(given_at, withdrawn_at), id"
    ).format(_CONSENT_COLS)
    return await fetch_all(conn, ConsentOut, query, (study_id, participant_id))


_ENROLMENTS = """
SELECT {pseudonym} AS pseudonym, e.enrolled_at, c.given_at IS NOT NULL AS consenting, c.consent_version,
       c.scopes, coalesce(c.given_at, c.withdrawn_at) AS since
FROM study_enrolments e
JOIN LATERAL (
    SELECT * FROM study_consents c
    WHERE c.study_id = e.study_id AND c.participant_id = e.participant_id
    ORDER BY coalesce(c.given_at, c.withdrawn_at) DESC, c.id DESC LIMIT 1
) c ON true
WHERE e.study_id = %(study)s"""


async def list_enrolments(
    conn: AsyncConnection, study_id: str, pads: Pads, cursor: Cursor, limit: int
) -> Page[EnrolmentOut]:
    """Enrolments under pseudonyms, by pseudonym; the current consent of each."""
    inner = sql.SQL(_ENROLMENTS).format(pseudonym=sql_participant(sql.SQL("e.participant_id")))
    select = sql.SQL("SELECT * FROM ({}) en").format(inner)
    params = {"study": study_id, "ipad": pads.inner, "opad": pads.outer}
    return await fetch_page(
        conn,
        EnrolmentOut,
        select,
        sql.SQL("TRUE"),
        params,
        ENROLMENT_KEYSET,
        cursor,
        limit,
        lambda e: (e.pseudonym,),
    )


async def participant_of(conn: AsyncConnection, study_id: str, pads: Pads, pseudonym: str) -> UUID | None:
    """The enrolled participant with this pseudonym (for the server's use only)."""
    query = sql.SQL(
        "SELECT participant_id FROM study_enrolments e WHERE e.study_id = %(study)s AND {} = %(pseudonym)s"
    ).format(sql_participant(sql.SQL("e.participant_id")))
    cur = await conn.execute(
        query, {"study": study_id, "ipad": pads.inner, "opad": pads.outer, "pseudonym": pseudonym}
    )
    row = await cur.fetchone()
    return None if row is None else UUID(str(row[0]))


async def consent_records(
    conn: AsyncConnection, study_id: str, participant_id: UUID
) -> list[ConsentRecordOut]:
    return await fetch_all(
        conn,
        ConsentRecordOut,
        sql.SQL(
            "SELECT consent_version, scopes, given_at, withdrawn_at, recorded_at FROM study_consents "
            "WHERE study_id = %s AND participant_id = %s ORDER BY coalesce(given_at, withdrawn_at), id"
        ),
        (study_id, participant_id),
    )


async def known_pseudonyms(
    conn: AsyncConnection, study_id: str, pads: Pads, pseudonyms: Sequence[str]
) -> set[str]:
    """Which of ``pseudonyms`` are those of participants enrolled in the study."""
    query = sql.SQL(
        "SELECT p FROM (SELECT {} AS p FROM study_enrolments e WHERE e.study_id = %(study)s) en "
        "WHERE p = ANY (%(pseudonyms)s::text[])"
    ).format(sql_participant(sql.SQL("e.participant_id")))
    cur = await conn.execute(
        query, {"study": study_id, "ipad": pads.inner, "opad": pads.outer, "pseudonyms": list(pseudonyms)}
    )
    return {str(r[0]) for r in await cur.fetchall()}
