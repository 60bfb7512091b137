"""How well the analytics attribute straps and participants, measured against a simulated gym's truth.

A :class:`~simulators.gymfleet.GymPlan` knows which member used which machine when, wearing which strap,
and which visits were checked in. :func:`render` turns local days of the plan into what the analytics job
loads from the database after the wire-contract path: every sample the devices send (the simulator's own
:class:`~simulators.gymfleet.GymFleet`, tick by tick), the device events the publisher sends when a use
starts or ends (a machine's first training status of the workout and ``post_workout``; a strap online and
offline), the check-ins the kiosk makes (each member's strap paired with them for good; the checked-in visits
from :data:`~simulators.gymfleet.CHECK_IN_LEAD` before stepping on to
:data:`~simulators.gymfleet.CHECK_OUT_LAG` after leaving), and the job's breaks at the site's local
midnights. No broker, no database, no clock: :func:`attribute` runs the job's pure steps
(:func:`analytics.sessions.assemble`, then :func:`analytics.sessions.join_straps`) on the whole span and
:func:`score` compares the sessions with the visits:

* **strap visits joined right**: of the visits by a member who owns a strap (it sends during their visits),
  the share whose strap is in the session of that visit's machine and in no other machine session during
  the visit;
* **sessions with the right participant**: of the visits, the share whose machine session names the visit's
  member when the platform can know them (the visit was checked in, or the member wears their strap) and
  nobody otherwise.

A visit's session is the session of its machine that overlaps it most. Visits shorter than the shortest
session are not counted. Deterministic from the plan's seed.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta

import numpy as np
from numpy.typing import NDArray

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
PAIRED_BEFORE = timedelta(days=1)
"""Straps are paired with their owners this long before the first rendered day."""


@dataclass(frozen=True, slots=True)
class Rendered:
    """Local days of a gym plan as the analytics' inputs; device codes index :attr:`device_ids`,
    participant codes :attr:`members`."""

    device_ids: list[str]
    is_strap: NDArray[np.bool_]
    samples: DeviceSamples
    breaks_device: NDArray[np.int64]
    breaks_t_s: NDArray[np.float64]
    check_ins: CheckIns
    members: list[str]
    visits: list[Visit]
    """The visits overlapping the rendered days."""
    start_s: float
    end_s: float


def render(plan: GymPlan, first_day: date, days: int = 1) -> Rendered:
    """``days`` local days of ``plan`` from ``first_day`` (see the module docstring)."""
    tz = plan.tz
    # in UTC: differences of aware datetimes in one zone are wall-clock differences (24 h on a DST day)
    start = datetime.combine(first_day, time(), tz).astimezone(UTC)
    end = datetime.combine(first_day + timedelta(days=days), time(), tz).astimezone(UTC)
    fleet = plan.fleet()
    ids = [d.device_id for d in plan.devices]
    code = {d: i for i, d in enumerate(ids)}
    values: list[list[float]] = []
    dev: list[int] = []
    events: list[tuple[int, float, str, str | None]] = []
    for tick in fleet.iter_history(start, (end - start).total_seconds()):
        for change in fleet.use_changes():
            events.append(
                _event(
                    code[change.device.device_id],
                    change.device.kind,
                    change.device.plan,
                    change.t,
                    change.in_use,
                )
            )
        for d, s in tick:
            dev.append(code[d.device_id])
            values.append(
                [s.t.timestamp(), *(math.nan if (x := getattr(s, f)) is None else x for f in _FIELDS)]
            )
    for change in fleet.stop(end):  # a visit going on at the end (a day rendered on its own) ends there
        events.append(
            _event(code[change.device.device_id], change.device.kind, change.device.plan, change.t, False)
        )

    table = np.asarray(values, dtype=np.float64).reshape(-1, 1 + len(_FIELDS))
    device = np.asarray(dev, dtype=np.int64)
    order = np.lexsort((table[:, 0], device))
    table, device = table[order], device[order]
    samples = DeviceSamples(
        device, table[:, 0].copy(), *(table[:, 1 + i].copy() for i in range(len(_FIELDS)))
    )

    events.sort(key=lambda e: (e[0], e[1]))
    bd, bt = status_breaks(
        np.array([e[0] for e in events], dtype=np.int64),
        np.array([e[1] for e in events], dtype=np.float64),
        [e[2] for e in events],
        [e[3] for e in events],
        np.zeros(len(events), dtype=np.int64),
    )
    midnights = np.array(
        [datetime.combine(first_day + timedelta(days=i), time(), tz).timestamp() for i in range(days + 1)]
    )
    bd = np.concatenate((bd, np.repeat(np.arange(len(ids), dtype=np.int64), midnights.size)))
    bt = np.concatenate((bt, np.tile(midnights, len(ids))))
    order = np.lexsort((bt, bd))
    bd, bt = bd[order], bt[order]

    members = [m.member_id for m in plan.members]
    pcode = {m: i for i, m in enumerate(members)}
    rows = [
        (code[strap_id], pcode[member_id], (start - PAIRED_BEFORE).timestamp(), math.inf)
        for member_id, strap_id in plan.strap_of.items()
    ]
    visits = plan.visits(start, end)
    rows += [
        (
            code[v.device_id],
            pcode[v.member_id],
            (v.start - CHECK_IN_LEAD).timestamp(),
            (v.end + CHECK_OUT_LAG).timestamp(),
        )
        for v in visits
        if plan.checked_in(v)
    ]
    rows.sort(key=lambda c: (c[0], c[2]))
    check_ins = CheckIns(
        np.array([c[0] for c in rows], dtype=np.int64),
        np.array([c[1] for c in rows], dtype=np.int64),
        np.array([c[2] for c in rows], dtype=np.float64),
        np.array([c[3] for c in rows], dtype=np.float64),
    )
    is_strap = np.array([d.kind == "hr_strap" for d in plan.devices], dtype=bool)
    return Rendered(
        ids, is_strap, samples, bd, bt, check_ins, members, visits, start.timestamp(), end.timestamp()
    )


def _event(
    device: int, kind: str, plan: str, t: datetime, in_use: bool
) -> tuple[int, float, str, str | None]:
    """(device code, t, event kind, training status) of a use starting or ending, as the publisher sends it
    and the ingester stores it."""
    if kind == "hr_strap":
        return device, t.timestamp(), "state" if in_use else "offline", None
    return device, t.timestamp(), "state", workout(plan).segments[0].training if in_use else "post_workout"


def attribute(
    r: Rendered, params: AssemblyParams = AssemblyParams(), *, machine_hr: bool = True
) -> tuple[Segments, Joined]:
    """The job's pure steps on rendered days (the whole span loaded and over). ``machine_hr=False`` joins
    by timing alone, as for machines that report no heart rate."""
    n = len(r.device_ids)
    active = active_mask(r.samples, r.is_strap)
    seg = assemble(
        r.samples,
        active,
        window_lo_s=np.full(n, -math.inf),
        window_hi_s=np.full(n, math.inf),
        now_s=math.inf,
        breaks_device=r.breaks_device,
        breaks_t_s=r.breaks_t_s,
        check_ins=r.check_ins,
        params=params,
    )
    site = np.zeros(n, dtype=np.int64)
    samples = r.samples if machine_hr else None
    return seg, join_straps(seg, is_strap=r.is_strap, site=site, params=params, samples=samples)


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


@dataclass(frozen=True, slots=True)
class _Session:
    start_s: float
    end_s: float
    strap: int  # device code, -1 none
    member: str | None


def score(
    plan: GymPlan, r: Rendered, seg: Segments, joined: Joined, params: AssemblyParams = AssemblyParams()
) -> Score:
    """Compare the joined sessions with the visits (module docstring); :attr:`Score.failures` says which
    visits went wrong and how."""
    out = Score()
    code = {d: i for i, d in enumerate(r.device_ids)}
    by_machine: dict[int, list[_Session]] = defaultdict(list)
    for p, s, part in zip(
        joined.primary.tolist(), joined.strap.tolist(), joined.participant.tolist(), strict=True
    ):
        d = int(seg.device[p])
        if not r.is_strap[d]:
            strap = int(seg.device[s]) if s >= 0 else -1
            member = r.members[part] if part >= 0 else None
            by_machine[d].append(_Session(float(seg.start_s[p]), float(seg.end_s[p]), strap, member))

    def overlap(x: _Session, lo: float, hi: float) -> float:
        return min(x.end_s, hi) - max(x.start_s, lo)

    for v in r.visits:
        lo, hi = max(v.start.timestamp(), r.start_s), min(v.end.timestamp(), r.end_s) - 1.0
        if hi - lo < params.min_active_s:
            continue
        best = max(by_machine.get(code[v.device_id], []), key=lambda x: overlap(x, lo, hi), default=None)
        if best is not None and overlap(best, lo, hi) <= 0:
            best = None
        label = f"{v.member_id} on {v.device_id} {v.start:%Y-%m-%d %H:%M:%S}-{v.end:%H:%M:%S}"
        strap_id = plan.strap_of.get(v.member_id)
        if strap_id is not None:
            out.strap_visits += 1
            strap = code[strap_id]
            elsewhere = [
                r.device_ids[d]
                for d, sessions in by_machine.items()
                if d != code[v.device_id]
                for x in sessions
                if x.strap == strap and overlap(x, lo, hi) > 0
            ]
            if best is not None and best.strap == strap and not elsewhere:
                out.strap_visits_right += 1
            else:
                got = (
                    "no session" if best is None else r.device_ids[best.strap] if best.strap >= 0 else "none"
                )
                out.failures.append(f"strap of {label}: joined {got}, also on {elsewhere}")
        out.sessions += 1
        want = v.member_id if plan.checked_in(v) or strap_id is not None else None
        if best is not None and best.member == want:
            out.sessions_right += 1
        else:
            got = "no session" if best is None else str(best.member)
            out.failures.append(f"participant of {label}: {got}, want {want}")
    return out
