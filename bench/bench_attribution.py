"""Benchmark: how well sessions get their straps and participants, against the simulator's truth.

For every scenario, seed and local day, :func:`simulators.attribution.render` produces what the analytics
job would load for that day of a simulated gym (samples, machine status and strap events, kiosk check-ins,
local midnights), :func:`simulators.attribution.attribute` assembles and joins the sessions exactly as the
job does, and :func:`simulators.attribution.score` compares them with the gym plan's visits:

* **strap visits joined right**: visits by a member wearing their strap whose strap is in the session of
  the visit's machine and in no other machine session meanwhile;
* **sessions with the right participant**: visits whose machine session names the member when the platform
  can know them (checked in, or wearing their strap) and nobody otherwise.

Both are held against the target (>= 99 %) in the same run; the exit status is 1 when either misses it.
The same sessions joined by timing alone (machines that report no heart rate) are printed for information.

Scenarios: the gym of ``tests/test_gym_day_end_to_end.py`` (6 machines, 2 busy hours, a class of two, the
week of the day it failed on), the demo gym of ``vitalab up`` (4 machines, open 24 h, 4-10 minute visits,
Europe/Brussels, around the spring DST change) and a real gym's defaults of ``vitalab simulate --gym``
(12 machines, 6-22 h, 20-60 minute visits, classes of eight that start and end together, Europe/Brussels,
around the autumn DST change).

Also printed: how long assembling and joining a simulated day takes, with and without the heart-rate
evidence.

Run: ``python bench/bench_attribution.py [--seeds N] [--days N]`` (defaults: 4 seeds x 4 days per scenario,
4-8 minutes on two shared cores, nearly all of it simulating the devices; the attribution figures are
deterministic). Not a test.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from datetime import date, timedelta

from simulators.attribution import Score, attribute, render, score
from simulators.gymfleet import MACHINE_MIX, GymConfig, GymPlan
from simulators.run import gym_config
from vitalab.settings import Settings

TARGET = 0.99


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    machines: int
    config: GymConfig
    first_day: date


def scenarios() -> list[Scenario]:
    brussels = Settings.model_construct(site_timezone="Europe/Brussels")
    return [
        Scenario(
            "test gym (UTC, week of 2026-12-03)",
            6,
            GymConfig(
                open_h=8,
                close_h=10,
                visit_minutes=(5, 12),
                rest_min=40,
                members=14,
                strap_share=0.6,
                check_in_share=0.7,
                classes=((9 * 60, "hiit30"),),
                class_size=2,
            ),
            date(2026, 12, 1),
        ),
        Scenario(
            "demo gym (Brussels, DST 2026-03-29)", 4, gym_config(brussels, demo=True), date(2026, 3, 28)
        ),
        Scenario(
            "real gym (Brussels, DST 2026-10-25)", 12, gym_config(brussels, demo=False), date(2026, 10, 24)
        ),
    ]


def run(n_seeds: int, n_days: int) -> int:
    print(f"attribution against the simulator's truth: {n_seeds} seeds x {n_days} local days per scenario")
    print(f"{'scenario':<40} {'strap visits':>12} {'joined right':>13} {'sessions':>9} {'participant':>12}")
    total, timing = Score(), Score()
    t0 = time.perf_counter()
    join_s = {True: 0.0, False: 0.0}
    samples = days = 0
    for sc in scenarios():
        got = Score()
        for seed in range(n_seeds):
            plan = GymPlan("bench", sc.machines, seed=seed, config=sc.config, kinds=MACHINE_MIX)
            for i in range(n_days):
                r = render(plan, sc.first_day + timedelta(days=i))
                samples, days = samples + r.samples.n, days + 1
                for machine_hr in (True, False):
                    t = time.perf_counter()
                    seg, joined = attribute(r, machine_hr=machine_hr)
                    join_s[machine_hr] += time.perf_counter() - t
                    (got if machine_hr else timing).add(score(plan, r, seg, joined))
        total.add(got)
        print(
            f"{sc.name:<40} {got.strap_visits:>12} {got.strap_share:>12.2%} {got.sessions:>9} "
            f"{got.participant_share:>11.2%}"
        )
    seconds = time.perf_counter() - t0
    ok = total.strap_share >= TARGET and total.participant_share >= TARGET
    print(
        f"{'all':<40} {total.strap_visits:>12} {total.strap_share:>12.2%} {total.sessions:>9} "
        f"{total.participant_share:>11.2%}"
    )
    print(
        f"strap visits joined to the right machine session: {total.strap_share:.2%} "
        f"({total.strap_visits_right}/{total.strap_visits}), target >= {TARGET:.0%}: "
        f"{'met' if total.strap_share >= TARGET else 'MISSED'}"
    )
    print(
        f"sessions given the right participant:             {total.participant_share:.2%} "
        f"({total.sessions_right}/{total.sessions}), target >= {TARGET:.0%}: "
        f"{'met' if total.participant_share >= TARGET else 'MISSED'}"
    )
    print(
        f"for information, by timing alone (machines without heart rate): straps {timing.strap_share:.2%}, "
        f"participants {timing.participant_share:.2%} (classes that start and end together are ambiguous)"
    )
    for line in total.failures[:20]:
        print("  wrong:", line)
    print(
        f"assembly + join of a simulated day ({samples / days:,.0f} samples on average): "
        f"{1000 * join_s[True] / days:.0f} ms, by timing alone {1000 * join_s[False] / days:.0f} ms; "
        f"the whole run (mostly simulating the devices) {seconds:.0f} s"
    )
    return 0 if ok else 1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--days", type=int, default=4)
    args = ap.parse_args()
    sys.exit(run(args.seeds, args.days))


if __name__ == "__main__":
    main()
