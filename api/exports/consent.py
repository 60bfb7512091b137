"""Consent as SQL: the common table expressions every export query starts with.

For one study, one data scope and a consent snapshot time (``%(snapshot)s``), :func:`ctes` defines:

``cs_study``     the study's period: from ``starts_on`` 00:00 UTC to the end of ``ends_on`` (open: unbounded).
``cs_records``   the study's consent records written up to the snapshot (``recorded_at <= snapshot``), each
                 with the time it takes effect (``given_at`` or ``withdrawn_at``) and the next record's.
``cs_people``    the participants whose *current* record (the last to take effect) is a consent that includes
                 the scope, registered at one of the study's sites, who did not withdraw their platform
                 consent (``participants.consent_withdrawn_at``) by the snapshot; with their pseudonym, and
                 restricted to the requested pseudonyms when a subset is given. A participant withdrawn
                 before the snapshot is not here, so nothing of theirs reaches an export.
``cs_spans``     per participant of ``cs_people``, the union (a multirange) of the time they consented to the
                 scope: each consent record that includes the scope holds from its time until the next
                 record, clipped to the study's period, the export's ``[since, until)`` and the snapshot.

So data at time ``t`` of a participant is exported for a scope only when the consent in force at ``t``
included the scope **and** the participant's current consent still does. Dataset queries join ``cs_people``
and test their rows against ``cs_spans`` (a session or a day must lie wholly inside; a sample's instant
inside). Parameters: ``study``, ``snapshot``, ``since``, ``until`` (NULL: open), ``subset`` (text[] or
NULL), ``scope``, and the pseudonym pads ``ipad``/``opad`` (:mod:`api.exports.pseudonyms`).
"""

from __future__ import annotations

from psycopg import sql

from api.exports.pseudonyms import sql_participant

_CTES = """
cs_study AS (
    SELECT coalesce(st.starts_on::timestamp AT TIME ZONE 'UTC', '-infinity'::timestamptz) AS t_start,
           coalesce((st.ends_on + 1)::timestamp AT TIME ZONE 'UTC', 'infinity'::timestamptz) AS t_end
    FROM studies st WHERE st.study_id = %(study)s
),
cs_records AS (
    SELECT c.participant_id, c.id, c.scopes, c.consent_version, c.given_at IS NOT NULL AS consenting,
           coalesce(c.given_at, c.withdrawn_at) AS t_from,
           lead(coalesce(c.given_at, c.withdrawn_at)) OVER (
               PARTITION BY c.participant_id ORDER BY coalesce(c.given_at, c.withdrawn_at), c.id) AS t_next,
           row_number() OVER (
               PARTITION BY c.participant_id ORDER BY coalesce(c.given_at, c.withdrawn_at) DESC, c.id DESC
           ) AS newest
    FROM study_consents c
    WHERE c.study_id = %(study)s AND c.recorded_at <= %(snapshot)s
),
cs_all AS (
    SELECT p.participant_id, p.site_id, {pseudonym} AS pseudonym, r.scopes, r.consent_version
    FROM cs_records r
    JOIN participants p ON p.participant_id = r.participant_id
    JOIN study_sites ss ON ss.study_id = %(study)s AND ss.site_id = p.site_id
    WHERE r.newest = 1 AND r.consenting AND %(scope)s = ANY (r.scopes)
      AND (p.consent_withdrawn_at IS NULL OR p.consent_withdrawn_at > %(snapshot)s)
),
cs_people AS (
    SELECT * FROM cs_all
    WHERE %(subset)s::text[] IS NULL OR pseudonym = ANY (%(subset)s::text[])
),
cs_spans AS (
    SELECT w.participant_id, range_agg(tstzrange(w.lo, w.hi)) AS spans
    FROM (
        SELECT r.participant_id,
               greatest(r.t_from, s.t_start, coalesce(%(since)s::timestamptz, '-infinity')) AS lo,
               least(coalesce(r.t_next, 'infinity'), s.t_end, %(snapshot)s::timestamptz,
                     coalesce(%(until)s::timestamptz, 'infinity')) AS hi
        FROM cs_records r
        JOIN cs_people pp ON pp.participant_id = r.participant_id
        CROSS JOIN cs_study s
        WHERE r.consenting AND %(scope)s = ANY (r.scopes)
    ) w
    WHERE w.lo < w.hi
    GROUP BY w.participant_id
)"""


def ctes() -> sql.Composed:
    """The consent CTEs (without the leading ``WITH``), to be followed by ``, <more CTEs>`` or a query."""
    return sql.SQL(_CTES).format(pseudonym=sql_participant(sql.SQL("p.participant_id")))
