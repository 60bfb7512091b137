"""What an export can contain: the datasets, their columns (the data dictionary) and their SQL.

Every query starts with the consent CTEs of :mod:`api.exports.consent`, so consent is enforced by the query
itself: rows of participants who are not consenting, rows outside their consent windows and rows of scopes
they did not agree to are never read. Rows come in a total order fixed by the data (pseudonym, then time,
then an internal tie-breaker), so the same export of unchanged data gives the same bytes.

A participant's samples are those of their own heart-rate straps while the strap was checked out to them
(``device_assignments`` of a device of kind ``hr_strap``) and those of the machines of their sessions during
the session (``sessions.device_ids``, other kinds, ``[started_at, ended_at]``); overlapping spans of one
device are merged (``range_agg``), so no sample appears twice. Sessions and daily rows are those of the
current :data:`~analytics.version.ALGORITHM_VERSION`; a session must lie wholly inside the consented time, a
day (site-local, like the analytics' days) too.

Researchers see pseudonyms (:mod:`api.exports.pseudonyms`), never internal ids, site references or
check-ins; devices appear as their kind. The profile is minimised: sex and a 10-year age band (at the
study's start year), and birth year, weight and heart-rate limits only when the study asks for
``full_profile`` and the participant agreed to it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Literal, get_args

from psycopg import sql

from api.exports.consent import ctes
from api.exports.pseudonyms import sql_session

DatasetName = Literal["sessions", "samples", "rr", "daily", "participants"]
Scope = Literal["derived_metrics", "raw_samples", "rr_intervals", "pooled_analyses", "full_profile"]
Kind = Literal["string", "timestamp", "date", "float32", "float64", "int16", "int32", "bool"]

DATASETS: Final[tuple[DatasetName, ...]] = get_args(DatasetName)
SCOPES: Final[tuple[Scope, ...]] = get_args(Scope)
STRAP: Final = "hr_strap"


@dataclass(frozen=True, slots=True)
class Column:
    """One column: its name (units in the name), value type, unit, meaning and SQL expression."""

    name: str
    kind: Kind
    unit: str | None
    meaning: str
    expr: str

    def select(self) -> sql.Composable:
        """The value as exported: timestamps as ISO 8601 UTC text with microseconds (``...Z``)."""
        expr: sql.Composable = sql.SQL(self.expr)  # a constant of this module, never input
        if "{session_ref}" in self.expr:
            expr = sql.SQL(self.expr).format(session_ref=sql_session(sql.SQL("s.session_id")))
        if self.kind == "timestamp":
            expr = sql.SQL("""to_char({} AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')""").format(expr)
        return sql.SQL("{} AS {}").format(expr, sql.Identifier(self.name))


def _c(name: str, kind: Kind, unit: str | None, meaning: str, expr: str) -> Column:
    return Column(name, kind, unit, meaning, expr)


PSEUDONYM = _c("pseudonym", "string", None, "the participant's pseudonym in this study", "pp.pseudonym")

SESSION_COLUMNS: Final = (
    PSEUDONYM,
    _c("session_ref", "string", None, "the session's reference in this study", "{session_ref}"),
    _c("site_id", "string", None, "the site of the session", "s.site_id"),
    _c("started_at", "timestamp", "UTC", "first active sample of the session", "s.started_at"),
    _c("ended_at", "timestamp", "UTC", "last active sample of the session", "s.ended_at"),
    _c(
        "activity",
        "string",
        None,
        "kind of the machine used (bike, treadmill, rower, cross_trainer), or hr_strap for a session with a "
        "heart-rate strap only",
        "(SELECT d.kind FROM unnest(s.device_ids) AS u(device_id) JOIN devices d USING (device_id) "
        f"ORDER BY d.kind = '{STRAP}', d.kind LIMIT 1)",
    ),
    _c(
        "source",
        "string",
        None,
        "how the session was found: machine_status, check_in, activity_gap",
        "s.source",
    ),
    _c(
        "hr_source",
        "string",
        None,
        "where its heart rate came from: strap, machine (empty: none)",
        "s.hr_source",
    ),
    _c("duration_s", "float32", "s", "first to last active sample", "s.duration_s"),
    _c(
        "moving_s",
        "float32",
        "s",
        "time with work (power, speed or cadence > 0)",
        "(s.summary->>'moving_s')::real",
    ),
    _c("distance_m", "float32", "m", "distance covered", "s.distance_m"),
    _c("energy_kcal", "float32", "kcal", "energy expended (analytics.energy)", "s.energy_kcal"),
    _c("hr_avg_bpm", "float32", "1/min", "time-weighted mean heart rate", "s.hr_avg_bpm"),
    _c("hr_max_bpm", "float32", "1/min", "highest heart rate", "(s.summary->>'hr_max_bpm')::real"),
    _c("trimp", "float32", "AU", "Banister training impulse", "s.trimp"),
    _c("moderate_min", "float32", "min", "minutes at moderate intensity (%HRR bands)", "s.moderate_min"),
    _c("vigorous_min", "float32", "min", "minutes at vigorous or near-maximal intensity", "s.vigorous_min"),
    _c("pai_as", "float32", "PAI", "PAI activity score of the session", "s.pai_as"),
    _c("hrv_rmssd_ms", "float32", "ms", "RMSSD of the RR intervals", "s.rmssd_ms"),
    _c("hrv_sdnn_ms", "float32", "ms", "SDNN of the RR intervals", "(s.summary->>'hrv_sdnn_ms')::real"),
    _c("power_avg_w", "float32", "W", "mean power", "(s.summary->>'avg_power_w')::real"),
    _c("power_max_w", "float32", "W", "highest power", "(s.summary->>'max_power_w')::real"),
    _c("algorithm_version", "string", None, "version of the analytics conventions", "s.algorithm_version"),
)

SAMPLE_COLUMNS: Final = (
    PSEUDONYM,
    _c("t", "timestamp", "UTC", "device time of the sample", "x.t"),
    _c("device_kind", "string", None, "kind of device that measured it", "d.kind"),
    _c("speed_kmh", "float32", "km/h", "speed", "x.speed_kmh"),
    _c("incline_pct", "float32", "%", "incline", "x.incline_pct"),
    _c("distance_m", "float64", "m", "distance since the machine's workout start", "x.distance_m"),
    _c("energy_kcal", "float32", "kcal", "energy since the machine's workout start", "x.energy_kcal"),
    _c("power_w", "float32", "W", "power", "x.power_w"),
    _c("cadence_rpm", "float32", "1/min", "cadence", "x.cadence_rpm"),
    _c("stroke_rate_spm", "float32", "1/min", "rowing stroke rate", "x.stroke_rate_spm"),
    _c("pace_s_per_500m", "float32", "s/500 m", "rowing pace", "x.pace_s_per_500m"),
    _c("hr_bpm", "float32", "1/min", "heart rate", "x.hr_bpm"),
    _c("elapsed_s", "float32", "s", "time since the machine's workout start", "x.elapsed_s"),
    _c("resistance_level", "float32", None, "the machine's resistance level", "x.resistance_level"),
    _c("met", "float32", "MET", "metabolic equivalent reported by the machine", "x.met"),
)

RR_COLUMNS: Final = (
    PSEUDONYM,
    _c("t", "timestamp", "UTC", "device time of the sample that carried the interval", "x.t"),
    _c("idx", "int16", None, "order of the interval within its sample (0 = oldest)", "x.idx"),
    _c("rr_ms", "float32", "ms", "RR interval", "x.rr_ms"),
    _c("device_kind", "string", None, "kind of device that measured it", "d.kind"),
)

DAILY_COLUMNS: Final = (
    PSEUDONYM,
    _c("day", "date", None, "the site-local day", "pd.day"),
    _c("sessions", "int32", None, "sessions that day", "pd.sessions"),
    _c("load", "float32", "AU", "sum of the day's session TRIMP", "pd.load"),
    _c("load_7d", "float32", "AU", "rolling 7-day load", "pd.load_7d"),
    _c("ctl", "float32", "AU", "chronic training load (42 days)", "pd.ctl"),
    _c("atl", "float32", "AU", "acute training load (7 days)", "pd.atl"),
    _c("tsb", "float32", "AU", "training stress balance", "pd.tsb"),
    _c("acwr_ewma", "float32", None, "acute:chronic workload ratio, EWMA", "pd.acwr_ewma"),
    _c("acwr_rolling", "float32", None, "acute:chronic workload ratio, rolling", "pd.acwr_rolling"),
    _c("moderate_min", "float32", "min", "moderate-intensity minutes", "pd.moderate_min"),
    _c("vigorous_min", "float32", "min", "vigorous-intensity minutes", "pd.vigorous_min"),
    _c("who_min_7d", "float32", "min", "rolling 7-day moderate + 2 x vigorous minutes", "pd.who_min_7d"),
    _c("who_status", "string", None, "below, within or above the WHO range", "pd.who_status"),
    _c("pai_as", "float32", "PAI", "PAI earned that day", "pd.pai_as"),
    _c("pai_7d", "float32", "PAI", "PAI over the rolling 7 days", "pd.pai_7d"),
    _c("rhr_bpm", "float32", "1/min", "resting heart rate proxy of the day", "pd.rhr_bpm"),
    _c("rhr_7d_bpm", "float32", "1/min", "7-day mean resting heart rate proxy", "pd.rhr_7d_bpm"),
    _c("rhr_28d_bpm", "float32", "1/min", "28-day mean resting heart rate proxy", "pd.rhr_28d_bpm"),
    _c("rmssd_ms", "float32", "ms", "mean session RMSSD that day", "pd.rmssd_ms"),
    _c("ln_rmssd_7d", "float32", "ln(ms)", "7-day mean of ln(RMSSD)", "pd.ln_rmssd_7d"),
    _c("vo2max_ml_kg_min", "float32", "mL/kg/min", "VO2max estimate (Uth-Sorensen)", "pd.vo2max_ml_kg_min"),
    _c("algorithm_version", "string", None, "version of the analytics conventions", "pd.algorithm_version"),
)

_AGE = "(cs.ref_year - p.birth_year)"
PARTICIPANT_COLUMNS: Final = (
    PSEUDONYM,
    _c("site_id", "string", None, "the participant's site", "pp.site_id"),
    _c("sex", "string", None, "female or male (empty: not given)", "p.sex"),
    _c(
        "age_band",
        "string",
        "years",
        "10-year age band at the study's start year (<20, 20-29, ..., 80+)",
        f"CASE WHEN p.birth_year IS NULL THEN NULL WHEN {_AGE} < 20 THEN '<20' WHEN {_AGE} >= 80 THEN '80+' "
        f"ELSE ({_AGE} / 10 * 10)::text || '-' || ({_AGE} / 10 * 10 + 9)::text END",
    ),
    _c("consent_version", "string", None, "version of the consent text in force", "pp.consent_version"),
    _c("scopes", "string", None, "data scopes agreed (;-separated)", "array_to_string(pp.scopes, ';')"),
)
_FULL = "CASE WHEN 'full_profile' = ANY (pp.scopes) THEN {} END"
FULL_PROFILE_COLUMNS: Final = (
    _c("birth_year", "int16", None, "birth year (full_profile only)", _FULL.format("p.birth_year")),
    _c("weight_kg", "float32", "kg", "body mass (full_profile only)", _FULL.format("p.weight_kg")),
    _c(
        "hr_rest_bpm",
        "float32",
        "1/min",
        "resting heart rate (full_profile only)",
        _FULL.format("p.hr_rest_bpm"),
    ),
    _c(
        "hr_max_bpm",
        "float32",
        "1/min",
        "maximal heart rate (full_profile only)",
        _FULL.format("p.hr_max_bpm"),
    ),
)

# --- the body of each dataset's query ------------------------------------------------------------------

# the participant's devices and when they were theirs (a strap while checked out, a machine in a session),
# intersected with the consented time; unnest of a multirange gives disjoint spans in order
_OWNED = """,
cs_own AS (
    SELECT a.participant_id, a.device_id, tstzrange(a.started_at, coalesce(a.ended_at, 'infinity')) AS span
    FROM device_assignments a
    JOIN cs_people pp ON pp.participant_id = a.participant_id
    JOIN devices d ON d.device_id = a.device_id AND d.kind = 'hr_strap'
    UNION ALL
    SELECT s.participant_id, u.device_id, tstzrange(s.started_at, s.ended_at + interval '1 microsecond')
    FROM sessions s
    JOIN cs_people pp ON pp.participant_id = s.participant_id
    CROSS JOIN LATERAL unnest(s.device_ids) AS u(device_id)
    JOIN devices d ON d.device_id = u.device_id AND d.kind IS DISTINCT FROM 'hr_strap'
    WHERE s.algorithm_version = %(algorithm_version)s
),
cs_cov AS (
    SELECT o.participant_id, o.device_id, unnest(o.owned * c.spans) AS span
    FROM (SELECT participant_id, device_id, range_agg(span) AS owned FROM cs_own GROUP BY 1, 2) o
    JOIN cs_spans c ON c.participant_id = o.participant_id
)"""

_SERIES_FROM = """
FROM cs_cov cov
JOIN cs_people pp ON pp.participant_id = cov.participant_id
JOIN devices d ON d.device_id = cov.device_id
JOIN {table} x ON x.device_id = cov.device_id AND x.t >= lower(cov.span) AND x.t < upper(cov.span)
JOIN study_sites ss ON ss.study_id = %(study)s AND ss.site_id = {site}"""

_SESSIONS_FROM = """
FROM sessions s
JOIN cs_people pp ON pp.participant_id = s.participant_id
JOIN cs_spans c ON c.participant_id = s.participant_id
JOIN study_sites ss ON ss.study_id = %(study)s AND ss.site_id = s.site_id
WHERE s.algorithm_version = %(algorithm_version)s
  AND c.spans @> tstzrange(s.started_at, s.ended_at, '[]')"""

_DAILY_FROM = """
FROM participant_daily pd
JOIN cs_people pp ON pp.participant_id = pd.participant_id
JOIN cs_spans c ON c.participant_id = pd.participant_id
JOIN sites si ON si.site_id = pp.site_id
WHERE pd.algorithm_version = %(algorithm_version)s
  AND c.spans @> tstzrange(pd.day::timestamp AT TIME ZONE si.timezone,
                           (pd.day + 1)::timestamp AT TIME ZONE si.timezone)"""

_PARTICIPANTS_FROM = """
FROM cs_people pp
JOIN participants p ON p.participant_id = pp.participant_id
CROSS JOIN (SELECT extract(year FROM coalesce(st.starts_on, (st.created_at AT TIME ZONE 'UTC')::date))::int
                   AS ref_year
            FROM studies st WHERE st.study_id = %(study)s) cs
WHERE EXISTS (SELECT 1 FROM cs_spans c WHERE c.participant_id = pp.participant_id)"""


@dataclass(frozen=True, slots=True)
class Dataset:
    """A dataset: the scope a participant must have agreed to, its columns and the parts of its query."""

    name: DatasetName
    scope: Scope
    meaning: str
    columns: tuple[Column, ...]
    more_ctes: str
    body: str
    order: str

    def query(self, columns: Sequence[Column] | None = None) -> sql.Composed:
        """The export query (consent CTEs, columns, body, total order)."""
        picked = self.columns if columns is None else tuple(columns)
        return sql.SQL("WITH {ctes}{more} SELECT {cols} {body} ORDER BY {order}").format(
            ctes=ctes(),
            more=sql.SQL(self.more_ctes),
            cols=sql.SQL(", ").join(c.select() for c in picked),
            body=sql.SQL(self.body),
            order=sql.SQL(self.order),
        )

    def count(self) -> sql.Composed:
        """How many rows :meth:`query` returns."""
        return sql.SQL("WITH {ctes}{more} SELECT count(*) {body}").format(
            ctes=ctes(), more=sql.SQL(self.more_ctes), body=sql.SQL(self.body)
        )


SESSIONS: Final = Dataset(
    "sessions",
    "derived_metrics",
    "one row per session (analytics summary)",
    SESSION_COLUMNS,
    "",
    _SESSIONS_FROM,
    "pp.pseudonym, s.started_at, s.session_id",
)
SAMPLES: Final = Dataset(
    "samples",
    "raw_samples",
    "one row per device and instant: the samples of the participant's own straps while checked out to them "
    "and of the machines of their sessions",
    SAMPLE_COLUMNS,
    _OWNED,
    _SERIES_FROM.format(table="samples", site="x.site_id"),
    "pp.pseudonym, cov.device_id, lower(cov.span), x.t",
)
RR: Final = Dataset(
    "rr",
    "rr_intervals",
    "one row per RR interval, from the same devices and times as samples",
    RR_COLUMNS,
    _OWNED,
    _SERIES_FROM.format(table="rr_intervals", site="d.site_id"),
    "pp.pseudonym, cov.device_id, lower(cov.span), x.t, x.idx",
)
DAILY: Final = Dataset(
    "daily",
    "derived_metrics",
    "one row per participant and site-local day (load, fitness, guideline minutes, PAI, trends)",
    DAILY_COLUMNS,
    "",
    _DAILY_FROM,
    "pp.pseudonym, pd.day",
)
PARTICIPANTS: Final = Dataset(
    "participants",
    "derived_metrics",
    "one row per participant with consented time in the export (minimised profile)",
    PARTICIPANT_COLUMNS,
    "",
    _PARTICIPANTS_FROM,
    "pp.pseudonym",
)
BY_NAME: Final[dict[DatasetName, Dataset]] = {d.name: d for d in (SESSIONS, SAMPLES, RR, DAILY, PARTICIPANTS)}


def columns_of(dataset: Dataset, study_scopes: Sequence[str]) -> tuple[Column, ...]:
    """The dataset's columns in an export of a study asking for ``study_scopes``."""
    if dataset.name == "participants" and "full_profile" in study_scopes:
        return dataset.columns + FULL_PROFILE_COLUMNS
    return dataset.columns


def bind(
    *,
    study_id: str,
    scope: Scope,
    snapshot: object,
    since: object,
    until: object,
    subset: Sequence[str] | None,
    inner: bytes,
    outer: bytes,
    algorithm_version: str,
) -> dict[str, object]:
    """The parameters of a dataset query."""
    return {
        "study": study_id,
        "scope": scope,
        "snapshot": snapshot,
        "since": since,
        "until": until,
        "subset": list(subset) if subset is not None else None,
        "ipad": inner,
        "opad": outer,
        "algorithm_version": algorithm_version,
    }


_SERIES_SELECT = """
SELECT pp.pseudonym,
       {session_ref} AS session_ref,
       {started},
       {ended},
       (floor(extract(epoch FROM s.ended_at - s.started_at)) + 1)::int AS seconds,
       floor(extract(epoch FROM x.t - s.started_at))::int AS sec,
       coalesce(avg(x.hr_bpm) FILTER (WHERE d.kind = 'hr_strap'), avg(x.hr_bpm)) AS hr_bpm,
       avg(x.power_w) AS power_w,
       avg(x.cadence_rpm) AS cadence_rpm,
       avg(x.speed_kmh) AS speed_kmh
FROM sessions s
JOIN cs_people pp ON pp.participant_id = s.participant_id
JOIN cs_spans c ON c.participant_id = s.participant_id
JOIN study_sites ss ON ss.study_id = %(study)s AND ss.site_id = s.site_id
CROSS JOIN LATERAL unnest(s.device_ids) AS u(device_id)
JOIN devices d ON d.device_id = u.device_id
JOIN samples x ON x.device_id = u.device_id AND x.t >= s.started_at AND x.t <= s.ended_at
WHERE s.algorithm_version = %(algorithm_version)s
  AND c.spans @> tstzrange(s.started_at, s.ended_at, '[]')
GROUP BY pp.pseudonym, s.session_id, s.started_at, s.ended_at, sec
ORDER BY pp.pseudonym, s.started_at, s.session_id, sec"""


def session_series_query() -> sql.Composed:
    """Per session of the samples scope (wholly consented), the mean of each channel per second from the
    session's start (heart rate from the strap when the session has one), ordered by session and second."""
    started = _c("started_at", "timestamp", None, "", "s.started_at").select()
    ended = _c("ended_at", "timestamp", None, "", "s.ended_at").select()
    return sql.SQL("WITH {ctes} {select}").format(
        ctes=ctes(),
        select=sql.SQL(_SERIES_SELECT).format(
            session_ref=sql_session(sql.SQL("s.session_id")),
            started=started,
            ended=ended,
        ),
    )
