"""Simulated gym members: who they are and how their heart answers work.

The heart-rate model is deliberately simple but physiological: HR moves toward a workload-dependent target
(Karvonen: HR = HRrest + intensity · (HRmax − HRrest)) with a first-order lag (τ ≈ 30 s on the way up,
slower on the way down), plus slow cardiac drift and noise; RR intervals carry respiratory sinus arrhythmia
(≈ 0.25 Hz) and beat-to-beat noise that shrink as HR rises.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

Sex = Literal["female", "male"]


@dataclass(frozen=True, slots=True)
class Member:
    member_id: str
    age_y: int
    sex: Sex
    weight_kg: float
    hr_rest_bpm: float
    hr_max_bpm: float
    ftp_w: float

    @classmethod
    def random(cls, member_id: str, rng: np.random.Generator) -> Member:
        sex: Sex = "female" if rng.random() < 0.5 else "male"
        age = int(rng.integers(18, 70))
        fitness = float(rng.normal(0.0, 1.0))  # z-score: fitter members have lower HRrest, higher FTP
        weight = float(rng.normal(68 if sex == "female" else 82, 9))
        hr_max = 211 - 0.64 * age + float(rng.normal(0, 6))  # HUNT (Nes 2013) with individual spread
        hr_rest = float(np.clip(64 - 5 * fitness + rng.normal(0, 4), 42, 90))
        ftp_per_kg = float(np.clip(2.6 + 0.5 * fitness - 0.01 * (age - 35), 1.2, 4.8))
        return cls(
            member_id, age, sex, round(weight, 1), round(hr_rest), round(hr_max), round(ftp_per_kg * weight)
        )


def _clip(x: float, lo: float, hi: float) -> float:
    """``np.clip`` for one float (same result, a hundredth of the cost)."""
    return min(max(x, lo), hi)


class Heart:
    """Heart rate and RR intervals of one member, stepped in seconds of device time."""

    def __init__(self, member: Member, rng: np.random.Generator) -> None:
        self.member = member
        self._rng = rng
        self.hr_bpm = member.hr_rest_bpm + 10.0
        self._clock_s = 0.0
        self._last_beat_s = -60.0 / self.hr_bpm
        self._next_beat_s = 0.0
        self._drift = 0.0

    def step(self, intensity: float, dt_s: float) -> tuple[float, list[float]]:
        """Advance by ``dt_s`` at ``intensity`` (fraction of heart-rate reserve, 0..1).

        Returns the HR displayed at the end of the step and the RR intervals (ms) of the beats in it.
        """
        m = self.member
        target = m.hr_rest_bpm + _clip(intensity, 0.0, 1.0) * (m.hr_max_bpm - m.hr_rest_bpm)
        self._drift = (
            min(self._drift + 0.004 * intensity * dt_s, 8.0) if intensity > 0.4 else self._drift * 0.99
        )
        tau = 30.0 if target > self.hr_bpm else 60.0
        self.hr_bpm += (target + self._drift - self.hr_bpm) * (1 - math.exp(-dt_s / tau))
        self.hr_bpm = _clip(self.hr_bpm + float(self._rng.normal(0, 0.3)), 35, m.hr_max_bpm)
        reserve = (self.hr_bpm - m.hr_rest_bpm) / max(m.hr_max_bpm - m.hr_rest_bpm, 1.0)
        hrv = 0.05 * (1.0 - 0.8 * _clip(reserve, 0, 1))  # relative RSA amplitude
        end = self._clock_s + dt_s
        rr: list[float] = []
        while self._next_beat_s <= end:
            rr.append(round((self._next_beat_s - self._last_beat_s) * 1000.0, 1))
            self._last_beat_s = self._next_beat_s
            rsa = 1 + hrv * math.sin(2 * math.pi * 0.25 * self._last_beat_s)
            interval_s = 60.0 / self.hr_bpm * rsa * (1 + float(self._rng.normal(0, hrv / 3)))
            self._next_beat_s += _clip(interval_s, 0.25, 2.0)
        self._clock_s = end
        return round(self.hr_bpm, 1), rr
