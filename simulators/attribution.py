"""How well the analytics attribute straps and participants, measured against a simulated gym's truth.

A :class:`~simulators.gymfleet.GymPlan` knows which member used which machine when, wearing which strap,
and which visits were checked in. :func:`render` turns local days of the plan into exactly what the
analytics job loads from the database after the wire-contract path (samples, the machines' training-status
and the straps' online/offline events, check-ins: each strap paired with its owner for good, and the
checked-in visits from :data:`~simulators.gymfleet.CHECK_IN_LEAD` before stepping on to
:data:`~simulators.gymfleet.CHECK_OUT_LAG` after leaving), with the job's local-midnight breaks. No broker,
no database: :func:`attribute` then runs the job's pure steps (:func:`analytics.sessions.assemble`, then
:func:`analytics.sessions.join_straps`) and :func:`score` compares the sessions with the visits:

* **strap visits joined right**: of the visits by a member who owns a strap (the strap sends during the
  visit), the share whose strap ended up in the session of that visit's machine, and nowhere else;
* **sessions with the right participant**: of the visits that became a session, the share whose session names
  the visit's member when the platform can know them (a check-in, or their strap) and nobody otherwise.

Sessions are matched to visits by machine and overlap. Deterministic from the plan's seed.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta

import numpy as np

from analytics.sessions import (
    AssemblyParams,
    CheckIns,
    DeviceSamples,
    Joined,
    Segments,
    active_mask,
    assemble,
    join_straps,
    status_breaks,
)
from simulators.gym import Visit
from simulators.gymfleet import CHECK_IN_LEAD, CHECK_OUT_LAG, GymPlan
from simulators.workouts import workout

_FIELDS = (
    "hr_bpm",
    "power_w",
    "speed_kmh",
    "incline_pct",
    "cadence_rpm",
    "stroke_rate_spm",
    "distance_m",
    "energy_kcal",
    "elapsed_s",
)


@dataclass(frozen=True, slots=True)
class Rendered:
    """Local days of a gym plan as the analytics' inputs; device codes index :attr:`device_ids`."""

    device_ids: list[str]
    is_strap: np.ndarray
    samples: DeviceSamples
    breaks_device: np.ndarray
    breaks_t_s: np.ndarray
    check_ins: CheckIns
    members: list[str]
    """Participant code -> member id."""
    visits: list[Visit]
    start_s: float
    end_s: float


def render(plan: GymPlan, first_day: date, days: int = 1) -> Rendered:
    """``days`` local days of ``plan`` from ``first_day`` (see the module docstring)."""
    tz = plan.tz
    start = datetime.combine(first_day, time(), tz)
    end = datetime.combine(first_day + timedelta(days=days), time(), tz)
    seconds = (end - start).total_seconds()
    fleet = plan.fleet()
    ids = [d.device_id for d in plan.devices]
    code = {d: i for i, d in enumerate(ids)}
    cols: dict[str, list[float]] = {f: [] for f in ("t_s", *_FIELDS)}
    dev: list[int] = []
    ev_dev: list[int] = []
    ev_t: list[float] = []
    ev_kind: list[str] = []
    ev_training: list[str | None] = []
    for tick in fleet.iter_history(start, seconds):
        for change in fleet.use_changes():
            d = change.device
            ev_dev.append(code[d.device_id])
            ev_t.append(change.t.timestamp())
            if d.kind == "hr_strap":
                ev_kind.append("state" if change.in_use else "offline")
                ev_training.append(None)
            else:
                ev_kind.append("state")
                ev_training.append(workout(d.plan).segments[0].training if change.in_use else "post_workout")
        for d, s in tick:
            dev.append(code[d.device_id])
            cols["t_s"].append(s.t.timestamp())
            for f in _FIELDS:
                v = getattr(s, f)
                cols[f].append(math.nan if v is None else float(v))
    for change in fleet.stop(end):
        ev_dev.append(code[change.device.device_id])
        ev_t.append(change.t.timestamp())
        ev_kind.append("offline" if change.device.kind == "hr_strap" else "state")
        ev_training.append(None if change.device.kind == "hr_strap" else "post_workout")

    order = np.lexsort((np.asarray(cols["t_s"]), np.asarray(dev, dtype=np.int64)))
    arrays = {k: np.asarray(v, dtype=np.float64)[order] for k, v in cols.items()}
    samples = DeviceSamples(
        device=np.asarray(dev, dtype=np.int64)[order],
        t_s=arrays["t_s"],
        **{f: arrays[f] for f in _FIELDS},
    )
    ev_order = np.lexsort((np.asarray(ev_t), np.asarray(ev_dev, dtype=np.int64)))
    bd, bt = status_breaks(
        np.asarray(ev_dev, dtype=np.int64)[ev_order],
        np.asarray(ev_t, dtype=np.float64)[ev_order],
        [ev_kind[i] for i in ev_order.tolist()],
        [ev_training[i] for i in ev_order.tolist()],
        np.zeros(len(ev_dev), dtype=np.int64),
    )
    # the job's local midnights: no session spans one
    midnights = [
        datetime.combine(first_day + timedelta(days=i), time(), tz).timestamp() for i in range(days + 1)
    ]
    bd = np.concatenate((bd, np.repeat(np.arange(len(ids), dtype=np.int64), len(midnights))))
    bt = np.concatenate((bt, np.tile(np.asarray(midnights), len(ids))))

    members = [m.member_id for m in plan.members]
    pcode = {m: i for i, m in enumerate(members)}
    ci_dev: list[int] = []
    ci_p: list[int] = []
    ci_lo: list[float] = []
    ci_hi: list[float] = []
    for member_id, strap_id in plan.strap_of.items():  # paired once, for good
        ci_dev.append(code[strap_id])
        ci_p.append(pcode[member_id])
        ci_lo.append(start.timestamp() - 86400.0)
        ci_hi.append(math.inf)
    visits = plan.visits(start, end)
    for v in visits:
        if plan.checked_in(v):
            ci_dev.append(code[v.device_id])
            ci_p.append(pcode[v.member_id])
            ci_lo.append((v.start - CHECK_IN_LEAD).timestamp())
            ci_hi.append((v.end + CHECK_OUT_LAG).timestamp())
    ci_order = np.lexsort((np.asarray(ci_lo), np.asarray(ci_dev, dtype=np.int64)))
    check_ins = CheckIns(
        np.asarray(ci_dev, dtype=np.int64)[ci_order],
        np.asarray(ci_p, dtype=np.int64)[ci_order],
        np.asarray(ci_lo, dtype=np.float64)[ci_order],
        np.asarray(ci_hi, dtype=np.float64)[ci_order],
    )
    is_strap = np.array([d.kind == "hr_strap" for d in plan.devices], dtype=bool)
    return Rendered(
        ids, is_strap, samples, bd, bt, check_ins, members, visits, start.timestamp(), end.timestamp()
    )


def attribute(r: Rendered, params: AssemblyParams = AssemblyParams()) -> tuple[Segments, Joined]:
    """The job's pure steps on rendered days: the whole span is loaded and over (``now`` after it)."""
    n = len(r.device_ids)
    active = active_mask(r.samples, r.is_strap)
    seg = assemble(
        r.samples,
        active,
        window_lo_s=np.full(n, -math.inf),
        window_hi_s=np.full(n, math.inf),
        now_s=r.end_s + 86400.0,
        breaks_device=r.breaks_device,
        breaks_t_s=r.breaks_t_s,
        check_ins=r.check_ins,
        params=params,
    )
    joined = join_straps(
        seg, is_strap=r.is_strap, site=np.zeros(n, dtype=np.int64), params=params, samples=r.samples
    )
    return seg, joined


@dataclass(slots=True)
class Score:
    strap_visits: int = 0
    strap_visits_right: int = 0
    sessions: int = 0
    sessions_right: int = 0
    failures: list[str] = field(default_factory=list)

    def add(self, other: Score) -> None:
        self.strap_visits += other.strap_visits
        self.strap_visits_right += other.strap_visits_right
        self.sessions += other.sessions
        self.sessions_right += other.sessions_right
        self.failures.extend(other.failures)

    @property
    def strap_share(self) -> float:
        return self.strap_visits_right / self.strap_visits if self.strap_visits else math.nan

    @property
    def participant_share(self) -> float:
        return self.sessions_right / self.sessions if self.sessions else math.nan


def score(plan: GymPlan, r: Rendered, seg: Segments, joined: Joined, min_active_s: float = 120.0) -> Score:
    """Compare joined sessions with the visits (module docstring)."""
    out = Score()
    code = {d: i for i, d in enumerate(r.device_ids)}
    # joined sessions per machine device: (start, end, strap device or -1, participant member or None)
    by_machine: dict[int, list[tuple[float, float, int, str | None]]] = defaultdict(list)
    strap_sessions: dict[int, list[tuple[float, float]]] = defaultdict(list)
    for p, s, part in zip(joined.primary.tolist(), joined.strap.tolist(), joined.participant.tolist(), strict=True):
        d = int(seg.device[p])
        member = r.members[part] if part >= 0 else None
        if r.is_strap[d]:
            strap_sessions[d].append((float(seg.start_s[p]), float(seg.end_s[p])))
            continue
        strap_dev = int(seg.device[s]) if s >= 0 else -1
        by_machine[d].append((float(seg.start_s[p]), float(seg.end_s[p]), strap_dev, member))
    for v in r.visits:
        lo, hi = v.start.timestamp(), v.end.timestamp() - 1.0
        if hi - lo < min_active_s:
            continue
        cands = by_machine.get(code[v.device_id], [])
        best = max(cands, key=lambda c: min(c[1], hi) - max(c[0], lo), default=None)
        if best is not None and min(best[1], hi) - max(best[0], lo) <= 0:
            best = None
        strap = plan.strap_of.get(v.member_id)
        label = f"{v.member_id} on {v.device_id} {v.start:%Y-%m-%d %H:%M:%S}–{v.end:%H:%M:%S}"
        if strap is not None:
            out.strap_visits += 1
            if best is not None and best[2] == code[strap]:
                out.strap_visits_right += 1
            else:
                got = "no session" if best is None else (r.device_ids[best[2]] if best[2] >= 0 else "no strap")
                out.failures.append(f"strap of {label}: {got}")
        out.sessions += 1
        want = v.member_id if plan.checked_in(v) or strap is not None else None
        if best is not None and best[3] == want:
            out.sessions_right += 1
        else:
            got = "no session" if best is None else str(best[3])
            out.failures.append(f"participant of {label}: {got}, want {want}")
    return out
