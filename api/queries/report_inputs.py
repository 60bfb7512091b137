"""Fingerprints of what a site report is computed from: equal fingerprints, equal inputs (a report computed
from them can be served again). Cheap: index-only reads (migration 0009)."""

from __future__ import annotations

from datetime import date, datetime

from psycopg import AsyncConnection

# the sessions the occupancy reads (count, ids, newest computation: a session rewritten, added or deleted,
# by the job or by an erasure, changes it) and the site's devices and kinds (which of them are machines)
_OCCUPANCY = """
SELECT count(*), coalesce(sum(session_id), 0), max(computed_at),
       (SELECT md5(coalesce(string_agg(device_id || ':' || coalesce(kind, ''), ',' ORDER BY device_id), ''))
        FROM devices WHERE site_id = %(site)s)
FROM sessions
WHERE site_id = %(site)s AND algorithm_version = %(v)s AND ended_at >= %(t0)s AND started_at < %(t1)s
"""


async def occupancy(
    conn: AsyncConnection, site_id: str, algorithm_version: str, t0: datetime, t1: datetime
) -> tuple[object, ...]:
    """What :func:`api.services.sites.occupancy` reads for ``[t0, t1)``, fingerprinted."""
    cur = await conn.execute(_OCCUPANCY, {"site": site_id, "v": algorithm_version, "t0": t0, "t1": t1})
    row = await cur.fetchone()
    assert row is not None
    return tuple(row)


# the member-days the vitality aggregates read (a day rewritten by the job, a member erased, changes it)
_VITALITY = """
SELECT count(*), coalesce(sum(d.sessions), 0), max(d.computed_at)
FROM participant_daily d
WHERE d.day >= %(since)s AND d.day <= %(until)s
  AND d.participant_id IN (SELECT participant_id FROM participants WHERE site_id = %(site)s)
"""


async def vitality(conn: AsyncConnection, site_id: str, since: date, until: date) -> tuple[object, ...]:
    """What :func:`api.services.sites.vitality` reads for ``[since, until]``, fingerprinted."""
    cur = await conn.execute(_VITALITY, {"site": site_id, "since": since, "until": until})
    row = await cur.fetchone()
    assert row is not None
    return tuple(row)
