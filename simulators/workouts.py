"""Structured workouts: what a member is asked to do, second by second.

A :class:`Workout` is a list of :class:`Segment` s, each with a duration, an intensity ramp (fraction of
heart-rate reserve, Karvonen: HR = HRrest + intensity · (HRmax − HRrest)) and the FTMS training status a
machine shows meanwhile (the wire contract's names: ``warm_up``, ``high_interval``, ...). Segments from
``repeat_from`` on repeat until the session ends (steady riding, open-ended intervals); without it the last
segment holds. Classes are workouts a group of members start at the same moment (see
:func:`simulators.gym.GymDay` and :meth:`simulators.fleet.Fleet.build`).

Pure: no clocks, no randomness.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from vitalab.wire.payload import TrainingStatus


@dataclass(frozen=True, slots=True)
class Segment:
    duration_s: float
    start: float
    """Intensity (fraction of heart-rate reserve, 0..1) at the start of the segment."""
    end: float
    """Intensity at its end (linear ramp in between)."""
    training: TrainingStatus

    def intensity(self, into_s: float) -> float:
        return self.start + (self.end - self.start) * min(max(into_s / self.duration_s, 0.0), 1.0)


@dataclass(frozen=True, slots=True)
class Workout:
    name: str
    segments: tuple[Segment, ...]
    repeat_from: int | None = None
    """Index of the first segment of the repeating block; ``None``: the last segment holds."""
    group: bool = False
    """A class: members start it together."""

    def __post_init__(self) -> None:
        if not self.segments or any(s.duration_s <= 0 for s in self.segments):
            raise ValueError(f"workout {self.name!r} needs segments with positive durations")
        if self.repeat_from is not None and not 0 <= self.repeat_from < len(self.segments):
            raise ValueError(f"workout {self.name!r}: repeat_from out of range")

    @property
    def duration_s(self) -> float | None:
        """Length of a finite workout; ``None`` when it repeats."""
        return None if self.repeat_from is not None else sum(s.duration_s for s in self.segments)

    def position(self, elapsed_s: float) -> tuple[int, float]:
        """(segment number, seconds into it). Segment numbers keep counting through repeats, so a change
        of number is a change of segment."""
        t = max(elapsed_s, 0.0)
        for i, seg in enumerate(self.segments):
            if t < seg.duration_s:
                return i, t
            t -= seg.duration_s
        if self.repeat_from is None:
            last = len(self.segments) - 1
            return last, t + self.segments[last].duration_s
        block = self.segments[self.repeat_from :]
        period = sum(s.duration_s for s in block)
        laps, t = divmod(t, period)
        for j, seg in enumerate(block):
            if t < seg.duration_s:
                return len(self.segments) + int(laps) * len(block) + j, t
            t -= seg.duration_s
        return len(self.segments) + int(laps + 1) * len(block) - 1, block[-1].duration_s  # rounding edge

    def segment(self, number: int) -> Segment:
        if number < len(self.segments):
            return self.segments[number]
        assert self.repeat_from is not None
        block = self.segments[self.repeat_from :]
        return block[(number - len(self.segments)) % len(block)]

    def at(self, elapsed_s: float) -> tuple[Segment, float]:
        """The segment at ``elapsed_s`` and the intensity asked for."""
        number, into = self.position(elapsed_s)
        seg = self.segment(number)
        return seg, seg.intensity(into)


WARM_UP: Final = Segment(300, 0.25, 0.5, "warm_up")

WORKOUTS: Final[dict[str, Workout]] = {
    w.name: w
    for w in (
        Workout("steady", (WARM_UP, Segment(600, 0.6, 0.6, "manual")), repeat_from=1),
        Workout(
            "intervals",
            (WARM_UP, Segment(120, 0.8, 0.8, "high_interval"), Segment(120, 0.45, 0.45, "low_interval")),
            repeat_from=1,
        ),
        # a 45-minute indoor-cycling class: warm-up, 5 × (3 min hard, 2 min recovery), tempo, cool-down
        Workout(
            "spin45",
            (
                WARM_UP,
                *(
                    seg
                    for _ in range(5)
                    for seg in (
                        Segment(180, 0.85, 0.85, "high_interval"),
                        Segment(120, 0.4, 0.4, "recovery"),
                    )
                ),
                Segment(600, 0.7, 0.7, "low_interval"),
                Segment(300, 0.5, 0.3, "cool_down"),
            ),
            group=True,
        ),
        # a 30-minute HIIT class on rowers and cross-trainers: 10 × (40 s all-out, 80 s easy)
        Workout(
            "hiit30",
            (
                Segment(360, 0.25, 0.55, "warm_up"),
                *(
                    seg
                    for _ in range(10)
                    for seg in (Segment(40, 0.92, 0.92, "high_interval"), Segment(80, 0.4, 0.4, "recovery"))
                ),
                Segment(240, 0.45, 0.3, "cool_down"),
            ),
            group=True,
        ),
    )
}
CLASSES: Final = tuple(name for name, w in WORKOUTS.items() if w.group)


def workout(name: str) -> Workout:
    try:
        return WORKOUTS[name]
    except KeyError:
        raise ValueError(f"unknown workout {name!r}; known: {', '.join(WORKOUTS)}") from None
