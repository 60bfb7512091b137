"""Fleet health and maintenance, computed by the analytics job: odometers and running hours from the samples,
service due, and alerts (with their webhook outbox).

Usage (per machine; straps and power meters have none), from the stored samples in time order:

``running_s``: the sum of the steps ``Δt`` between consecutive samples of the device that are at most
    ``max_step_s`` (10 s) apart and whose later sample shows effort (speed, power, cadence or stroke rate
    > 0: :func:`analytics.sessions.active_mask`'s signal). A longer step is a gap: nobody knows whether the
    machine ran, so it counts nothing (a workout's first sample adds nothing either).
``distance_m``: ``distance_m`` is the workout's distance, restarting at 0 with every workout, so the odometer
    adds, for each sample with a distance, the increase over the device's previous distance reading (within
    ``lookback_s``, an hour): an increase counts in full; a drop of at most ``reset_drop_m`` (10 m) is jitter
    and adds nothing; a larger drop is a new workout, whose own distance so far is added; without a previous
    reading within the hour the sample starts a workout and its distance is added. The total is therefore the
    sum of every workout's last distance.
Both are attributed to the UTC hour of the later sample (``device_usage_hourly``), recomputed for the hours of
the windows the job processes (each window's first samples are compared with the readings before it), so a
late sample re-counts its hour; ``device_counters`` holds every machine's sums: of its whole history, and
since its newest service (``device_services``; the hour of a service is split at the service's instant).

Service due: the distance or running time since the last service reaches the threshold of the machine's
kind and model (``service_thresholds``: the model's row, else the kind's ``*`` row).

Alerts (``alerts``: one open row per subject and kind, ``ended_at`` set when the condition clears):

``silent``: a device expected to report is not heard (no sample, no state) for ``silent_after_s`` while its
    site is open (``sites.opening_hours`` in the site's timezone, :mod:`analytics.opening_hours`; a site
    without hours is always open). A machine is expected while
    the site is open: it is silent once it said it is offline, or when its state says a workout is running
    and nothing came for ``silent_after_s``. (Machines send samples only while in use: an idle machine is
    quiet, not silent.) A strap or power meter is expected while its state says it is online (worn). The
    silence starts at the later of the last message and the opening; the alert ``silent_after_s`` after that.
``service_due``: see above; starts when the job first sees it.
``clock_skew``: the newest device-day of ``device_quality_daily`` (at most two days old) measured a clock
    skew beyond ``clock_skew_limit_s``; starts at that day.
``dead_letters``: at least ``dead_letters_per_hour`` dead letters in the hour before ``now``, per device (a
    refused message without a device: per site); starts at the first of them.
``gateway_offline``: a gateway's status (its last will) says offline while its site is open; starts
    ``silent_after_s`` after the later of its last status and the opening.

Webhooks. An alert that opens or closes at a site with a webhook (``site_webhooks``) adds an ``alert_outbox``
row in the job's transaction; :func:`deliver_due` posts the due rows after the commit (in the periodic
trigger's event loop, never in the job's transaction), each with the header ``X-Vitalab-Delivery`` (the row's
id, for the receiver to drop repeats), retrying failures with exponential backoff up to ``webhook_attempts``
times.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Literal

import httpx
import numpy as np
import psycopg
from numpy.typing import NDArray
from psycopg import sql
from psycopg.types.json import Jsonb

from analytics import store
from analytics.job_plan import EARLIEST, Window
from analytics.job_runs import Reject, isolated, reason_of
from analytics.opening_hours import SiteHours
from analytics.sessions import INACTIVE_STATUSES
from vitalab.wire.registry import MACHINE_KINDS

logger = logging.getLogger(__name__)

F64 = NDArray[np.float64]
I64 = NDArray[np.int64]
B = NDArray[np.bool_]

AlertKind = Literal["silent", "service_due", "clock_skew", "dead_letters", "gateway_offline"]
Subject = Literal["device", "gateway", "site"]
ALERT_KINDS: Final[tuple[AlertKind, ...]] = (
    "silent",
    "service_due",
    "clock_skew",
    "dead_letters",
    "gateway_offline",
)
HOUR_S: Final[float] = 3600.0
DAY_S: Final[float] = 86_400.0


@dataclass(frozen=True, slots=True)
class FleetConfig:
    silent_after_s: float = 300.0
    """A device or gateway expected to report is silent after this long (the API's offline default)."""
    clock_skew_limit_s: float = 10.0
    """A device clock further off than this (either way) raises ``clock_skew``."""
    dead_letters_per_hour: int = 30
    """This many dead letters of one device within an hour raise ``dead_letters``."""
    max_step_s: float = 10.0
    """Running time: longer steps between samples are gaps."""
    lookback_s: float = HOUR_S
    """Distance: a reading without a previous one this recent starts a workout."""
    reset_drop_m: float = 10.0
    """Distance: a drop up to this is jitter, a larger one a new workout."""
    webhook_timeout_s: float = 5.0
    webhook_attempts: int = 8
    webhook_backoff_s: float = 30.0
    """First retry after this long, doubling with every attempt."""


# ---------------------------------------------------------------------------------------------- usage (pure)


@dataclass(frozen=True, slots=True)
class UsageRows:
    """Samples of several devices sorted by (device, t). ``context`` rows come from before the window: they
    are previous readings only and add nothing themselves."""

    device: I64
    t_s: F64
    distance_m: F64  # NaN: no reading
    effort: B
    context: B

    @property
    def n(self) -> int:
        return int(self.t_s.shape[0])


def usage_contributions(rows: UsageRows, cfg: FleetConfig = FleetConfig()) -> tuple[F64, F64]:
    """Per row: the distance (m) and running time (s) it adds (module docstring)."""
    n = rows.n
    if n == 0:
        return np.zeros(0), np.zeros(0)
    dev, t, d = rows.device, rows.t_s, rows.distance_m
    same = np.r_[False, dev[1:] == dev[:-1]]
    dt = np.r_[math.inf, np.diff(t)]
    run = np.where(same & rows.effort & (dt > 0) & (dt <= cfg.max_step_s), dt, 0.0)
    valid = ~np.isnan(d)
    pos = np.arange(n)
    last_valid = np.maximum.accumulate(np.where(valid, pos, -1))
    prev = np.r_[-1, last_valid[:-1]]  # the previous reading (any device) of every row
    starts = np.r_[0, np.flatnonzero(dev[1:] != dev[:-1]) + 1]
    device_start = starts[np.searchsorted(starts, pos, side="right") - 1]
    p = np.clip(prev, 0, None)
    has_prev = valid & (prev >= device_start) & (t - t[p] <= cfg.lookback_s)
    with np.errstate(invalid="ignore"):
        delta = d - d[p]
        added = np.where(delta >= 0, delta, np.where(delta >= -cfg.reset_drop_m, 0.0, d))
    dist = np.where(valid, np.where(has_prev, added, d), 0.0)
    dist[rows.context] = 0.0
    run[rows.context] = 0.0
    return np.asarray(dist, dtype=np.float64), np.asarray(run, dtype=np.float64)


def hourly_sums(rows: UsageRows, dist: F64, run: F64) -> dict[tuple[int, float], tuple[float, float]]:
    """(device code, UTC hour start in epoch s) -> (distance_m, running_s), hours with something only."""
    out: dict[tuple[int, float], tuple[float, float]] = {}
    keep = ~rows.context & ((dist > 0) | (run > 0))
    if not keep.any():
        return out
    hours = np.floor(rows.t_s[keep] / HOUR_S) * HOUR_S
    for dv, h, dd, rr in zip(
        rows.device[keep].tolist(), hours.tolist(), dist[keep].tolist(), run[keep].tolist(), strict=True
    ):
        a, b = out.get((dv, h), (0.0, 0.0))
        out[(dv, h)] = (a + dd, b + rr)
    return out


# ---------------------------------------------------------------------------------------------- usage (db)

_USAGE_QUERY = sql.SQL(
    "SELECT w.code - 1, s.t, coalesce(s.distance_m, 'NaN'), s.effort, s.ctx "
    "FROM unnest(%(dev)s::text[], %(lo)s::timestamptz[], %(hi)s::timestamptz[]) "
    "WITH ORDINALITY AS w(device_id, lo, hi, code) "
    "CROSS JOIN LATERAL ("
    "  (SELECT t, distance_m, {effort} AS effort, 1::float8 AS ctx FROM samples "
    "   WHERE device_id = w.device_id AND t < w.lo AND t >= w.lo - %(lookback)s * interval '1 second' "
    "   AND distance_m IS NOT NULL ORDER BY t DESC LIMIT 1)"
    "  UNION ALL"
    "  (SELECT t, distance_m, {effort}, 1::float8 FROM samples "
    "   WHERE device_id = w.device_id AND t < w.lo AND t >= w.lo - %(step)s * interval '1 second' "
    "   ORDER BY t DESC LIMIT 1)"
    "  UNION ALL"
    "  (SELECT t, distance_m, {effort}, 0::float8 FROM samples "
    "   WHERE device_id = w.device_id AND t >= w.lo AND t < w.hi)"
    ") s ORDER BY 1, 2, 5 DESC"
).format(
    effort=sql.SQL(
        "(coalesce(speed_kmh, 0) > 0 OR coalesce(power_w, 0) > 0 OR coalesce(cadence_rpm, 0) > 0 "
        "OR coalesce(stroke_rate_spm, 0) > 0)::int::float8"
    )
)


def load_usage(
    conn: psycopg.Connection[Any],
    devices: Sequence[str],
    lo: Sequence[datetime],
    hi: Sequence[datetime],
    cfg: FleetConfig,
) -> UsageRows:
    """The samples of ``devices[i]`` in ``[lo[i], hi[i])``, after each device's previous distance reading
    (within ``lookback_s``) and previous sample (within ``max_step_s``) before ``lo[i]``."""
    rec = store.copy_records(
        conn,
        _USAGE_QUERY,
        {
            "dev": list(devices),
            "lo": list(lo),
            "hi": list(hi),
            "lookback": cfg.lookback_s,
            "step": cfg.max_step_s,
        },
        ["i8", "ts", "f8", "f8", "f8"],
    )
    return UsageRows(
        store.col_i8(rec, 0),
        store.us_to_s(store.col_i8(rec, 1)),
        store.col_f8(rec, 2),
        store.col_f8(rec, 3) > 0,
        store.col_f8(rec, 4) > 0,
    )


def site_machines(conn: psycopg.Connection[Any], site_id: str) -> list[str]:
    rows = conn.execute(
        "SELECT device_id FROM devices WHERE site_id = %s AND kind = ANY(%s) ORDER BY device_id",
        (site_id, list(MACHINE_KINDS)),
    ).fetchall()
    return [r[0] for r in rows]


def update_usage(
    conn: psycopg.Connection[Any], site_id: str, lo_s: float, hi_s: float, cfg: FleetConfig
) -> int:
    """Recompute ``device_usage_hourly`` of the site's machines for the UTC hours of ``[lo_s, hi_s)``; returns
    the rows written."""
    machines = site_machines(conn, site_id)
    if not machines or hi_s <= lo_s:
        return 0
    h0 = math.floor(lo_s / HOUR_S) * HOUR_S
    h1 = max(math.ceil(hi_s / HOUR_S) * HOUR_S, h0 + HOUR_S)
    lo, hi = store.to_datetime(h0), store.to_datetime(h1)
    rows = load_usage(conn, machines, [lo] * len(machines), [hi] * len(machines), cfg)
    dist, run = usage_contributions(rows, cfg)
    sums = hourly_sums(rows, dist, run)
    conn.execute(
        "DELETE FROM device_usage_hourly WHERE device_id = ANY(%s) AND hour >= %s AND hour < %s",
        (machines, lo, hi),
    )
    if sums:
        keys = sorted(sums)
        conn.execute(
            "INSERT INTO device_usage_hourly (device_id, hour, site_id, distance_m, running_s) "
            "SELECT d, h, %s, dm, rs FROM unnest(%s::text[], %s::timestamptz[], %s::float8[], %s::float8[]) "
            "AS u(d, h, dm, rs)",
            (
                site_id,
                [machines[k[0]] for k in keys],
                [store.to_datetime(k[1]) for k in keys],
                [sums[k][0] for k in keys],
                [sums[k][1] for k in keys],
            ),
        )
    return len(sums)


def refresh_counters(
    conn: psycopg.Connection[Any], machines: Sequence[str], now: datetime, cfg: FleetConfig
) -> int:
    """Recompute ``device_counters`` of ``machines`` from ``device_usage_hourly`` and their newest service
    (the service's own hour split at its instant, from the samples); marks their services counted."""
    if not machines:
        return 0
    services = dict(
        conn.execute(
            "SELECT device_id, max(serviced_at) FROM device_services WHERE device_id = ANY(%s) GROUP BY 1",
            (list(machines),),
        ).fetchall()
    )
    cut: dict[str, datetime] = {}
    part_dev: list[str] = []
    part_lo: list[datetime] = []
    part_hi: list[datetime] = []
    for dev, at in services.items():
        s = at.timestamp()
        c = math.ceil(s / HOUR_S) * HOUR_S
        cut[dev] = store.to_datetime(c)
        if c > s:
            part_dev.append(dev)
            part_lo.append(at)
            part_hi.append(store.to_datetime(c))
    partial: dict[str, tuple[float, float]] = {}
    if part_dev:
        rows = load_usage(conn, part_dev, part_lo, part_hi, cfg)
        dist, run = usage_contributions(rows, cfg)
        for i, dev in enumerate(part_dev):
            mine = rows.device == i
            partial[dev] = (float(dist[mine].sum()), float(run[mine].sum()))
    ordered = sorted(machines)
    conn.execute(
        """
        INSERT INTO device_counters AS c (device_id, site_id, distance_m, running_s, service_distance_m,
                                          service_running_s, last_service_at, computed_at)
        SELECT d.device_id, d.site_id, coalesce(sum(u.distance_m), 0), coalesce(sum(u.running_s), 0),
               coalesce(sum(u.distance_m) FILTER (WHERE p.cut IS NULL OR u.hour >= p.cut), 0) + p.pd,
               coalesce(sum(u.running_s) FILTER (WHERE p.cut IS NULL OR u.hour >= p.cut), 0) + p.pr,
               p.serviced_at, %(now)s
        FROM unnest(%(dev)s::text[], %(cut)s::timestamptz[], %(at)s::timestamptz[], %(pd)s::float8[],
                    %(pr)s::float8[]) AS p(device_id, cut, serviced_at, pd, pr)
        JOIN devices d USING (device_id)
        LEFT JOIN device_usage_hourly u ON u.device_id = p.device_id
        GROUP BY d.device_id, d.site_id, p.cut, p.serviced_at, p.pd, p.pr
        ON CONFLICT (device_id) DO UPDATE SET
            site_id = EXCLUDED.site_id, distance_m = EXCLUDED.distance_m, running_s = EXCLUDED.running_s,
            service_distance_m = EXCLUDED.service_distance_m, service_running_s = EXCLUDED.service_running_s,
            last_service_at = EXCLUDED.last_service_at, computed_at = EXCLUDED.computed_at
        """,
        {
            "dev": ordered,
            "cut": [cut.get(d) for d in ordered],
            "at": [services.get(d) for d in ordered],
            "pd": [partial.get(d, (0.0, 0.0))[0] for d in ordered],
            "pr": [partial.get(d, (0.0, 0.0))[1] for d in ordered],
            "now": now,
        },
    )
    conn.execute(
        "UPDATE device_services SET counted = true WHERE device_id = ANY(%s) AND NOT counted", (ordered,)
    )
    return len(ordered)


def uncounted_services(conn: psycopg.Connection[Any]) -> list[str]:
    """Machines with a service the counters do not reflect yet."""
    rows = conn.execute(
        "SELECT DISTINCT s.device_id FROM device_services s JOIN devices d USING (device_id) "
        "WHERE NOT s.counted AND d.kind = ANY(%s)",
        (list(MACHINE_KINDS),),
    ).fetchall()
    return [r[0] for r in rows]


# ---------------------------------------------------------------------------------------------- alerts


@dataclass(frozen=True, slots=True)
class Condition:
    """An alert condition that holds at ``now``: since when, and what it measured."""

    site_id: str
    subject: Subject
    subject_id: str
    kind: AlertKind
    started_at: datetime
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, str, str, str]:
        return (self.site_id, self.subject, self.subject_id, self.kind)


@dataclass(frozen=True, slots=True)
class DeviceStatus:
    device_id: str
    site_id: str
    kind: str | None
    quarantined: bool
    online: bool | None
    training: str | None
    state_at: datetime | None
    last_heard: datetime | None


@dataclass(frozen=True, slots=True)
class GatewayStatus:
    gateway_id: str
    site_id: str
    online: bool
    last_seen: datetime | None


def silent_devices(
    devices: Iterable[DeviceStatus], opened: dict[str, datetime | None], now: datetime, cfg: FleetConfig
) -> list[Condition]:
    """``silent`` conditions at ``now`` (module docstring); ``opened``: each site's :func:`open_since`."""
    grace = timedelta(seconds=cfg.silent_after_s)
    out: list[Condition] = []
    for d in devices:
        since = opened.get(d.site_id)
        if since is None or d.quarantined:
            continue
        start: datetime | None = None
        reason = "no_data"
        machine = d.kind is None or d.kind in MACHINE_KINDS
        if machine and d.online is False:
            start, reason = max(d.state_at or since, since) + grace, "offline"
        elif (machine and d.online and d.training is not None and d.training not in INACTIVE_STATUSES) or (
            not machine and d.online
        ):
            start = max(d.last_heard or since, since) + grace
        if start is not None and start <= now:
            detail = {"reason": reason, "last_heard": _iso(d.last_heard), "training": d.training}
            out.append(Condition(d.site_id, "device", d.device_id, "silent", start, detail))
    return out


def offline_gateways(
    gateways: Iterable[GatewayStatus], opened: dict[str, datetime | None], now: datetime, cfg: FleetConfig
) -> list[Condition]:
    grace = timedelta(seconds=cfg.silent_after_s)
    out: list[Condition] = []
    for g in gateways:
        since = opened.get(g.site_id)
        if since is None or g.online:
            continue
        start = max(g.last_seen or since, since) + grace
        if start <= now:
            detail = {"last_seen": _iso(g.last_seen)}
            out.append(Condition(g.site_id, "gateway", g.gateway_id, "gateway_offline", start, detail))
    return out


def _iso(t: datetime | None) -> str | None:
    return None if t is None else t.astimezone(UTC).isoformat()


def site_openings(conn: psycopg.Connection[Any], now: datetime) -> dict[str, datetime | None]:
    """Every site's :meth:`~analytics.opening_hours.SiteHours.open_since` at ``now`` (an opening that began
    before :data:`EARLIEST`, or a site always open: :data:`EARLIEST`)."""
    out: dict[str, datetime | None] = {}
    for site, tz_name, hours in conn.execute("SELECT site_id, timezone, opening_hours FROM sites").fetchall():
        since = SiteHours.stored(site, tz_name, hours).open_since(now)
        out[site] = None if since is None else max(since, EARLIEST)
    return out


def _device_statuses(conn: psycopg.Connection[Any]) -> list[DeviceStatus]:
    rows = conn.execute(
        "SELECT device_id, site_id, kind, quarantined, online, training, state_at, "
        "greatest(last_seen, state_at) FROM devices"
    ).fetchall()
    return [DeviceStatus(*r) for r in rows]


def _gateway_statuses(conn: psycopg.Connection[Any]) -> list[GatewayStatus]:
    rows = conn.execute("SELECT gateway_id, site_id, online, last_seen FROM gateways").fetchall()
    return [GatewayStatus(*r) for r in rows]


def service_due(conn: psycopg.Connection[Any], now: datetime) -> list[Condition]:
    rows = conn.execute(
        """
        SELECT c.device_id, c.site_id, c.service_distance_m, c.service_running_s, t.km, t.hours
        FROM device_counters c JOIN devices d USING (device_id)
        CROSS JOIN LATERAL (
            SELECT km, hours FROM service_thresholds
            WHERE kind = d.kind AND model IN (coalesce(d.model, '*'), '*')
            ORDER BY model = '*' LIMIT 1
        ) t
        WHERE (t.km IS NOT NULL AND c.service_distance_m >= t.km * 1000)
           OR (t.hours IS NOT NULL AND c.service_running_s >= t.hours * 3600)
        """
    ).fetchall()
    return [
        Condition(
            site,
            "device",
            dev,
            "service_due",
            now,
            {
                "km_since_service": dist / 1000,
                "hours_since_service": run / 3600,
                "km_threshold": km,
                "hours_threshold": hours,
            },
        )
        for dev, site, dist, run, km, hours in rows
    ]


def skewed_clocks(conn: psycopg.Connection[Any], now: datetime, cfg: FleetConfig) -> list[Condition]:
    since = now.astimezone(UTC).date() - timedelta(days=2)
    rows = conn.execute(
        """
        SELECT q.device_id, q.site_id, q.day, q.clock_skew_s FROM (
            SELECT DISTINCT ON (device_id) device_id, site_id, day, clock_skew_s FROM device_quality_daily
            WHERE day >= %s AND clock_skew_s IS NOT NULL AND clock_skew_s <> 'NaN'
            ORDER BY device_id, day DESC
        ) q WHERE abs(q.clock_skew_s) > %s
        """,
        (since, cfg.clock_skew_limit_s),
    ).fetchall()
    return [
        Condition(
            site,
            "device",
            dev,
            "clock_skew",
            min(datetime(day.year, day.month, day.day, tzinfo=UTC), now),
            {"clock_skew_s": skew, "day": day.isoformat(), "limit_s": cfg.clock_skew_limit_s},
        )
        for dev, site, day, skew in rows
    ]


def dead_letter_bursts(conn: psycopg.Connection[Any], now: datetime, cfg: FleetConfig) -> list[Condition]:
    rows = conn.execute(
        """
        SELECT s.site_id, l.device_id, count(*), min(l.received_at)
        FROM dead_letters l
        LEFT JOIN devices d ON d.device_id = l.device_id
        JOIN sites s ON s.site_id = coalesce(d.site_id, split_part(l.topic, '/', 3))
        WHERE l.received_at > %s AND l.received_at <= %s
        GROUP BY 1, 2 HAVING count(*) >= %s
        """,
        (now - timedelta(hours=1), now, cfg.dead_letters_per_hour),
    ).fetchall()
    return [
        Condition(
            site,
            "device" if dev is not None else "site",
            dev if dev is not None else site,
            "dead_letters",
            first,
            {"last_hour": n, "limit_per_hour": cfg.dead_letters_per_hour},
        )
        for site, dev, n, first in rows
    ]


def conditions(conn: psycopg.Connection[Any], now: datetime, cfg: FleetConfig) -> list[Condition]:
    """Every alert condition that holds at ``now``."""
    opened = site_openings(conn, now)
    return (
        silent_devices(_device_statuses(conn), opened, now, cfg)
        + service_due(conn, now)
        + skewed_clocks(conn, now, cfg)
        + dead_letter_bursts(conn, now, cfg)
        + offline_gateways(_gateway_statuses(conn), opened, now, cfg)
    )


@dataclass
class AlertChanges:
    opened: int = 0
    closed: int = 0
    queued: int = 0
    """webhook deliveries added to the outbox"""


def apply_alerts(conn: psycopg.Connection[Any], found: Sequence[Condition], now: datetime) -> AlertChanges:
    """Make the open alerts equal to ``found``: open the new ones, update the others' detail, close those that
    cleared (at ``now``); queue a webhook delivery for every opening and closing at a site with a webhook."""
    current = {c.key: c for c in found}
    open_rows = {
        (r[1], r[2], r[3], r[4]): r[0]
        for r in conn.execute(
            "SELECT alert_id, site_id, subject, subject_id, kind FROM alerts WHERE ended_at IS NULL"
        ).fetchall()
    }
    changes = AlertChanges()
    events: list[tuple[str, int]] = []
    for key, alert_id in open_rows.items():
        if key not in current:
            conn.execute(
                "UPDATE alerts SET ended_at = greatest(%s, started_at), updated_at = %s WHERE alert_id = %s",
                (now, now, alert_id),
            )
            changes.closed += 1
            events.append(("alert.closed", alert_id))
    for key, c in current.items():
        if key in open_rows:
            conn.execute(
                "UPDATE alerts SET detail = %s, updated_at = %s WHERE alert_id = %s AND detail <> %s",
                (Jsonb(c.detail), now, open_rows[key], Jsonb(c.detail)),
            )
            continue
        row = conn.execute(
            "INSERT INTO alerts (site_id, subject, subject_id, kind, started_at, detail, updated_at) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING alert_id",
            (c.site_id, c.subject, c.subject_id, c.kind, c.started_at, Jsonb(c.detail), now),
        ).fetchone()
        assert row is not None
        changes.opened += 1
        events.append(("alert.opened", int(row[0])))
    changes.queued = _queue(conn, events, now)
    return changes


def _queue(conn: psycopg.Connection[Any], events: Sequence[tuple[str, int]], now: datetime) -> int:
    """Add an outbox row per event whose site has a webhook (the alert as it is now, in the payload)."""
    if not events:
        return 0
    cur = conn.execute(
        """
        INSERT INTO alert_outbox (site_id, url, payload, created_at, next_attempt_at)
        SELECT a.site_id, w.url,
               jsonb_build_object(
                   'event', e.event,
                   'alert', jsonb_build_object(
                       'alert_id', a.alert_id, 'site_id', a.site_id, 'subject', a.subject,
                       'subject_id', a.subject_id, 'kind', a.kind, 'started_at', a.started_at,
                       'ended_at', a.ended_at, 'detail', a.detail)),
               %(now)s, %(now)s
        FROM unnest(%(event)s::text[], %(id)s::bigint[]) WITH ORDINALITY AS e(event, alert_id, n)
        JOIN alerts a USING (alert_id)
        JOIN site_webhooks w ON w.site_id = a.site_id
        ORDER BY e.n
        """,
        {"event": [e for e, _ in events], "id": [i for _, i in events], "now": now},
    )
    return max(cur.rowcount, 0)


# ---------------------------------------------------------------------------------------------- job step


@dataclass
class FleetReport:
    usage_rows: int = 0
    counters: int = 0
    alerts_opened: int = 0
    alerts_closed: int = 0
    webhooks_queued: int = 0


def run_step(
    conn: psycopg.Connection[Any], windows: Sequence[Window], now: datetime, cfg: FleetConfig
) -> tuple[FleetReport, list[Reject]]:
    """The analytics job's fleet step, inside its transaction: usage of the windows' hours, the counters of
    the machines of their sites and of machines with a new service, then the alerts as of ``now``. A window
    (or the alerts) that fails on its data is set aside, the rest is done."""
    report = FleetReport()
    sites: set[str] = set()

    def usage(ws: Sequence[Window]) -> None:
        for w in ws:
            report.usage_rows += update_usage(conn, w.site_id, w.lo_s, min(w.hi_s, now.timestamp()), cfg)
            sites.add(w.site_id)

    rejects = isolated(conn, list(windows), usage, _usage_reject)
    machines = set(uncounted_services(conn))
    for site in sorted(sites):
        machines.update(site_machines(conn, site))

    def counters(ds: Sequence[str]) -> None:
        report.counters += refresh_counters(conn, ds, now, cfg)

    rejects += isolated(
        conn, sorted(machines), counters, lambda d, exc: Reject("device_counters", d, reason_of(exc))
    )

    def alerts(_: Sequence[str]) -> None:
        changes = apply_alerts(conn, conditions(conn, now, cfg), now)
        report.alerts_opened, report.alerts_closed = changes.opened, changes.closed
        report.webhooks_queued = changes.queued

    rejects += isolated(conn, ["alerts"], alerts, lambda k, exc: Reject("alerts", k, reason_of(exc)))
    return report, rejects


def _usage_reject(w: Window, exc: BaseException) -> Reject:
    lo, hi = store.to_datetime(w.lo_s), store.to_datetime(w.hi_s)
    return Reject(
        "device_usage_hourly",
        f"{w.site_id}/{lo.isoformat()}/{hi.isoformat()}",
        reason_of(exc),
        {"site_id": w.site_id, "from": lo.isoformat(), "to": hi.isoformat()},
    )


# ---------------------------------------------------------------------------------------------- webhooks


@dataclass
class DeliveryReport:
    delivered: int = 0
    retried: int = 0
    failed: int = 0
    """given up after the last attempt"""


def backoff(attempts: int, cfg: FleetConfig) -> timedelta:
    """The wait after the ``attempts``-th failed attempt (1, 2, ...): base, doubling."""
    return timedelta(seconds=cfg.webhook_backoff_s * 2 ** max(attempts - 1, 0))


async def deliver_due(
    conninfo: str,
    client: httpx.AsyncClient,
    *,
    now: datetime,
    cfg: FleetConfig = FleetConfig(),
    limit: int = 100,
) -> DeliveryReport:
    """Post the outbox rows due at ``now`` (at most ``limit``), one at a time, each in a transaction that
    holds its row (``FOR UPDATE SKIP LOCKED``: two drainers never post the same row at once). A 2xx answer
    delivers it; anything else (another status, a timeout, a refused connection) schedules a retry after
    :func:`backoff`, or gives up after ``webhook_attempts`` attempts."""
    report = DeliveryReport()
    async with await psycopg.AsyncConnection.connect(conninfo) as conn:
        for _ in range(limit):
            async with conn.transaction():
                cur = await conn.execute(
                    "SELECT id, url, payload, attempts FROM alert_outbox "
                    "WHERE delivered_at IS NULL AND failed_at IS NULL AND next_attempt_at <= %s "
                    "ORDER BY next_attempt_at, id LIMIT 1 FOR UPDATE SKIP LOCKED",
                    (now,),
                )
                row = await cur.fetchone()
                if row is None:
                    break
                row_id, url, payload, attempts = row
                error = await _post(client, url, row_id, payload, cfg)
                attempts += 1
                if error is None:
                    await conn.execute(
                        "UPDATE alert_outbox SET delivered_at = %s, attempts = %s, last_error = NULL "
                        "WHERE id = %s",
                        (now, attempts, row_id),
                    )
                    report.delivered += 1
                elif attempts >= cfg.webhook_attempts:
                    logger.warning("webhook %s: giving up after %d attempts (%s)", url, attempts, error)
                    await conn.execute(
                        "UPDATE alert_outbox SET failed_at = %s, attempts = %s, last_error = %s "
                        "WHERE id = %s",
                        (now, attempts, error, row_id),
                    )
                    report.failed += 1
                else:
                    logger.info("webhook %s: attempt %d failed (%s); retrying", url, attempts, error)
                    await conn.execute(
                        "UPDATE alert_outbox SET next_attempt_at = %s, attempts = %s, last_error = %s "
                        "WHERE id = %s",
                        (now + backoff(attempts, cfg), attempts, error, row_id),
                    )
                    report.retried += 1
    return report


async def _post(
    client: httpx.AsyncClient, url: str, row_id: int, payload: Any, cfg: FleetConfig
) -> str | None:
    """POST one delivery; None when the receiver took it (2xx), else why not."""
    body = json.dumps(payload, separators=(",", ":")).encode()
    headers = {
        "Content-Type": "application/json",
        "X-Vitalab-Delivery": str(row_id),
        "X-Vitalab-Event": str(payload.get("event", "")),
    }
    try:
        r = await client.post(url, content=body, headers=headers, timeout=cfg.webhook_timeout_s)
    except httpx.HTTPError as exc:
        return reason_of(exc)
    if r.is_success:
        return None
    return f"HTTP {r.status_code}"
