"""Many sessions in one set of flat NumPy arrays (CSR layout), and segment reductions over them.

Layout. Session ``i`` owns sample rows ``offsets[i]:offsets[i+1]`` of every per-sample array and RR intervals
``rr_ms[rr_offsets[i]:rr_offsets[i+1]]``. ``NaN`` marks a missing value; gaps in time are real gaps (never
filled). Per-session context (age, sex, HRrest, HRmax, weight, FTP, machine kind) is one ``(n,)`` array each.

Segment helpers. Every metric reduces per-sample values to per-session values with the helpers below; they
accept empty segments (a session without samples) and return the documented neutral value for them:

===================  =======================================  ==============================
helper               result for a session                      empty / no finite value
===================  =======================================  ==============================
``segment_sum``      sum (NaN propagates)                      0
``segment_nansum``   sum of finite values                      0
``segment_count``    number of ``True`` in a boolean mask      0
``segment_mean``     mean of finite values                     NaN
``segment_max``      max of finite values                      NaN
``segment_min``      min of finite values                      NaN
===================  =======================================  ==============================

They use ``ufunc.reduceat`` on the starts of the non-empty segments only, which makes one pass over the data
(the speed of a plain ``arr.sum()``) without a Python loop per session.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np
from numpy.typing import ArrayLike, NDArray

from analytics.errors import BatchShapeError
from vitalab.wire import registry

KINDS: Final[tuple[str, ...]] = registry.KIND_NAMES
"""Kind codes (the registry's order, append only): ``kind[i]`` is an index into this tuple, ``-1`` unknown."""

KIND_CODE: Final[dict[str, int]] = {name: code for code, name in enumerate(KINDS)}

SEX_FEMALE: Final[int] = 0
SEX_MALE: Final[int] = 1
SEX_UNKNOWN: Final[int] = -1

SAMPLE_FIELDS: Final[tuple[str, ...]] = (
    "t_s",
    "hr_bpm",
    "power_w",
    "speed_kmh",
    "incline_pct",
    "cadence_rpm",
    "distance_m",
    "energy_kcal",
)
CONTEXT_FLOAT_FIELDS: Final[tuple[str, ...]] = ("hr_rest_bpm", "hr_max_bpm", "age_y", "weight_kg", "ftp_w")

F64 = NDArray[np.float64]
I64 = NDArray[np.int64]


@dataclass(frozen=True)
class SessionInput:
    """One session, for :meth:`SessionBatch.from_sessions` (tests, jobs assembling a few sessions).

    Per-sample arrays default to "all missing"; ``rr_ms`` defaults to no RR intervals. ``kind`` is a name from
    :data:`KINDS` (or ``None`` unknown); ``sex`` is 0 female, 1 male, -1 unknown.
    """

    t_s: ArrayLike
    hr_bpm: ArrayLike | None = None
    power_w: ArrayLike | None = None
    speed_kmh: ArrayLike | None = None
    incline_pct: ArrayLike | None = None
    cadence_rpm: ArrayLike | None = None
    distance_m: ArrayLike | None = None
    energy_kcal: ArrayLike | None = None
    rr_ms: ArrayLike | None = None
    kind: str | None = None
    hr_rest_bpm: float = math.nan
    hr_max_bpm: float = math.nan
    age_y: float = math.nan
    sex: int = SEX_UNKNOWN
    weight_kg: float = math.nan
    ftp_w: float = math.nan


@dataclass(frozen=True, slots=True)
class SessionBatch:
    """Samples of many sessions concatenated: session i owns rows offsets[i]:offsets[i+1] (CSR layout).
    Every per-sample array has length offsets[-1]; NaN marks a missing value. Times are seconds (float64)
    since the Unix epoch, ascending within a session, one row per device instant (1 Hz nominal; gaps are
    real gaps, never filled)."""

    offsets: I64  # (n+1,), offsets[0] == 0, non-decreasing
    t_s: F64  # (N,)
    hr_bpm: F64  # (N,)
    power_w: F64
    speed_kmh: F64
    incline_pct: F64
    cadence_rpm: F64
    distance_m: F64  # machine's cumulative counter
    energy_kcal: F64  # machine's cumulative counter
    rr_offsets: I64  # (n+1,) RR intervals of session i are rr_ms[rr_offsets[i]:rr_offsets[i+1]]
    rr_ms: F64  # (M,) in beat order
    # per-session context, shape (n,)
    kind: NDArray[np.int8]  # index into KINDS; -1 unknown
    hr_rest_bpm: F64  # NaN unknown
    hr_max_bpm: F64  # NaN unknown -> estimated from age (HUNT) where age known
    age_y: F64
    sex: NDArray[np.int8]  # 0 female, 1 male, -1 unknown
    weight_kg: F64
    ftp_w: F64  # NaN unknown

    @property
    def n(self) -> int:
        """Number of sessions."""
        return int(self.offsets.shape[0]) - 1

    @property
    def n_samples(self) -> int:
        return int(self.offsets[-1])

    @property
    def n_rr(self) -> int:
        return int(self.rr_offsets[-1])

    def validate(self) -> None:
        """Check shapes, dtypes, offsets and time order; raise :class:`BatchShapeError` naming the field."""
        _check_offsets("offsets", self.offsets)
        n = self.n
        n_samples = int(self.offsets[-1])
        for name in SAMPLE_FIELDS:
            _check_array(name, getattr(self, name), np.float64, n_samples)
        if not np.all(np.isfinite(self.t_s)):
            bad = int(np.flatnonzero(~np.isfinite(self.t_s))[0])
            raise BatchShapeError("t_s", "time must be finite", _session_of(self.offsets, bad))
        if n_samples > 1:
            step = np.diff(self.t_s)
            inner = np.ones(n_samples - 1, dtype=bool)
            boundaries = self.offsets[1:-1]
            boundaries = boundaries[(boundaries > 0) & (boundaries < n_samples)] - 1
            inner[boundaries] = False
            bad_steps = np.flatnonzero(inner & ~(step > 0))
            if bad_steps.size:
                raise BatchShapeError(
                    "t_s",
                    "time must be strictly increasing within a session",
                    _session_of(self.offsets, int(bad_steps[0])),
                )
        _check_offsets("rr_offsets", self.rr_offsets)
        if self.rr_offsets.shape[0] != n + 1:
            raise BatchShapeError("rr_offsets", f"length {self.rr_offsets.shape[0]}, expected {n + 1}")
        _check_array("rr_ms", self.rr_ms, np.float64, int(self.rr_offsets[-1]))
        for name in CONTEXT_FLOAT_FIELDS:
            _check_array(name, getattr(self, name), np.float64, n)
        _check_array("kind", self.kind, np.int8, n)
        _check_array("sex", self.sex, np.int8, n)
        if n and (int(self.kind.min()) < -1 or int(self.kind.max()) >= len(KINDS)):
            bad = int(np.flatnonzero((self.kind < -1) | (self.kind >= len(KINDS)))[0])
            raise BatchShapeError("kind", f"code must be -1..{len(KINDS) - 1}", bad)
        if n and not np.all((self.sex >= -1) & (self.sex <= 1)):
            bad = int(np.flatnonzero((self.sex < -1) | (self.sex > 1))[0])
            raise BatchShapeError("sex", "code must be -1, 0 or 1", bad)

    @classmethod
    def from_sessions(cls, sessions: Sequence[SessionInput]) -> SessionBatch:
        """Concatenate single sessions into one batch (a convenience for tests and small jobs)."""
        lengths: list[int] = []
        rr_lengths: list[int] = []
        columns: dict[str, list[F64]] = {name: [] for name in SAMPLE_FIELDS}
        rr_parts: list[F64] = []
        for index, session in enumerate(sessions):
            t = np.asarray(session.t_s, dtype=np.float64)
            if t.ndim != 1:
                raise BatchShapeError("t_s", f"must be 1-D, got shape {t.shape}", index)
            lengths.append(int(t.shape[0]))
            columns["t_s"].append(t)
            for name in SAMPLE_FIELDS[1:]:
                raw = getattr(session, name)
                if raw is None:
                    columns[name].append(np.full(t.shape[0], np.nan))
                    continue
                values = np.asarray(raw, dtype=np.float64)
                if values.shape != t.shape:
                    raise BatchShapeError(name, f"shape {values.shape} differs from t_s {t.shape}", index)
                columns[name].append(values)
            rr = np.zeros(0) if session.rr_ms is None else np.asarray(session.rr_ms, dtype=np.float64)
            if rr.ndim != 1:
                raise BatchShapeError("rr_ms", f"must be 1-D, got shape {rr.shape}", index)
            rr_parts.append(rr)
            rr_lengths.append(int(rr.shape[0]))
            if session.kind is not None and session.kind not in KIND_CODE:
                raise BatchShapeError(
                    "kind", f"unknown kind {session.kind!r}; known: {', '.join(KINDS)}", index
                )

        def cat(parts: list[F64]) -> F64:
            return np.concatenate(parts).astype(np.float64, copy=False) if parts else np.zeros(0)

        batch = cls(
            offsets=_offsets(lengths),
            t_s=cat(columns["t_s"]),
            hr_bpm=cat(columns["hr_bpm"]),
            power_w=cat(columns["power_w"]),
            speed_kmh=cat(columns["speed_kmh"]),
            incline_pct=cat(columns["incline_pct"]),
            cadence_rpm=cat(columns["cadence_rpm"]),
            distance_m=cat(columns["distance_m"]),
            energy_kcal=cat(columns["energy_kcal"]),
            rr_offsets=_offsets(rr_lengths),
            rr_ms=cat(rr_parts),
            kind=np.array([-1 if s.kind is None else KIND_CODE[s.kind] for s in sessions], dtype=np.int8),
            hr_rest_bpm=np.array([s.hr_rest_bpm for s in sessions], dtype=np.float64),
            hr_max_bpm=np.array([s.hr_max_bpm for s in sessions], dtype=np.float64),
            age_y=np.array([s.age_y for s in sessions], dtype=np.float64),
            sex=np.array([s.sex for s in sessions], dtype=np.int8),
            weight_kg=np.array([s.weight_kg for s in sessions], dtype=np.float64),
            ftp_w=np.array([s.ftp_w for s in sessions], dtype=np.float64),
        )
        batch.validate()
        return batch

    def session(self, i: int) -> SessionInput:
        """Session ``i`` as a :class:`SessionInput` (copies; for tests and per-session reference loops)."""
        if not 0 <= i < self.n:
            raise BatchShapeError("offsets", f"session index {i} out of range 0..{self.n - 1}")
        a, b = int(self.offsets[i]), int(self.offsets[i + 1])
        ra, rb = int(self.rr_offsets[i]), int(self.rr_offsets[i + 1])
        code = int(self.kind[i])
        return SessionInput(
            t_s=self.t_s[a:b].copy(),
            hr_bpm=self.hr_bpm[a:b].copy(),
            power_w=self.power_w[a:b].copy(),
            speed_kmh=self.speed_kmh[a:b].copy(),
            incline_pct=self.incline_pct[a:b].copy(),
            cadence_rpm=self.cadence_rpm[a:b].copy(),
            distance_m=self.distance_m[a:b].copy(),
            energy_kcal=self.energy_kcal[a:b].copy(),
            rr_ms=self.rr_ms[ra:rb].copy(),
            kind=None if code < 0 else KINDS[code],
            hr_rest_bpm=float(self.hr_rest_bpm[i]),
            hr_max_bpm=float(self.hr_max_bpm[i]),
            age_y=float(self.age_y[i]),
            sex=int(self.sex[i]),
            weight_kg=float(self.weight_kg[i]),
            ftp_w=float(self.ftp_w[i]),
        )

    def slice(self, start: int, stop: int) -> SessionBatch:
        """Sessions ``start:stop`` as a new batch of *views* (no copy; offsets rebased to 0)."""
        if not 0 <= start <= stop <= self.n:
            raise BatchShapeError("offsets", f"slice {start}:{stop} out of range 0..{self.n}")
        a, b = int(self.offsets[start]), int(self.offsets[stop])
        ra, rb = int(self.rr_offsets[start]), int(self.rr_offsets[stop])
        return SessionBatch(
            offsets=self.offsets[start : stop + 1] - a,
            t_s=self.t_s[a:b],
            hr_bpm=self.hr_bpm[a:b],
            power_w=self.power_w[a:b],
            speed_kmh=self.speed_kmh[a:b],
            incline_pct=self.incline_pct[a:b],
            cadence_rpm=self.cadence_rpm[a:b],
            distance_m=self.distance_m[a:b],
            energy_kcal=self.energy_kcal[a:b],
            rr_offsets=self.rr_offsets[start : stop + 1] - ra,
            rr_ms=self.rr_ms[ra:rb],
            kind=self.kind[start:stop],
            hr_rest_bpm=self.hr_rest_bpm[start:stop],
            hr_max_bpm=self.hr_max_bpm[start:stop],
            age_y=self.age_y[start:stop],
            sex=self.sex[start:stop],
            weight_kg=self.weight_kg[start:stop],
            ftp_w=self.ftp_w[start:stop],
        )

    def subset(self, indices: Sequence[int] | NDArray[np.integer]) -> SessionBatch:
        """A new batch holding the given sessions in the given order (copies)."""
        return SessionBatch.from_sessions([self.session(int(i)) for i in indices])


# ---------------------------------------------------------------------------------------------- segments


def segment_lengths(offsets: I64) -> I64:
    """Rows per segment, ``(n,)``."""
    return np.diff(offsets)


def segment_ids(offsets: I64) -> NDArray[np.intp]:
    """Segment index of every row, ``(N,)`` (``np.repeat`` over the segment lengths)."""
    n = offsets.shape[0] - 1
    return np.repeat(np.arange(n, dtype=np.intp), np.diff(offsets))


def _reduceat(ufunc: np.ufunc, values: NDArray[np.generic], offsets: I64, empty: float) -> F64:
    n = offsets.shape[0] - 1
    out = np.full((n, *values.shape[1:]), empty, dtype=np.float64)
    if n == 0 or values.shape[0] == 0:
        return out
    lengths = np.diff(offsets)
    nonempty = lengths > 0
    if not nonempty.any():
        return out
    # reduceat over the starts of the non-empty segments only: each range then ends where the next
    # non-empty segment starts, which is exactly its own end (empty segments in between own no rows)
    out[nonempty] = ufunc.reduceat(values, offsets[:-1][nonempty], axis=0)
    return out


def segment_sum(values: NDArray[np.floating] | NDArray[np.integer], offsets: I64) -> F64:
    """Per-segment sum along axis 0 (``values`` may be ``(N,)`` or ``(N, k)``); NaN propagates; empty → 0."""
    return _reduceat(np.add, values, offsets, 0.0)


def segment_nansum(values: F64, offsets: I64) -> F64:
    """Per-segment sum of the finite values; empty or no finite value → 0."""
    return _reduceat(np.add, np.where(np.isfinite(values), values, 0.0), offsets, 0.0)


def segment_count(mask: NDArray[np.bool_], offsets: I64) -> I64:
    """Per-segment number of ``True`` rows, ``(n,)`` int64."""
    n = offsets.shape[0] - 1
    out = np.zeros(n, dtype=np.int64)
    nonempty = np.diff(offsets) > 0
    if mask.shape[0] == 0 or not nonempty.any():
        return out
    out[nonempty] = np.add.reduceat(mask, offsets[:-1][nonempty], dtype=np.int64)
    return out


def segment_mean(values: F64, offsets: I64) -> F64:
    """Per-segment mean of the finite values; NaN where a segment has none."""
    finite = np.isfinite(values)
    total = _reduceat(np.add, np.where(finite, values, 0.0), offsets, 0.0)
    count = segment_count(finite, offsets)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def segment_max(values: F64, offsets: I64) -> F64:
    """Per-segment max of the finite values (``np.fmax`` ignores NaN); NaN where a segment has none."""
    out = _reduceat(np.fmax, np.where(np.isinf(values), np.nan, values), offsets, np.nan)
    return out


def segment_min(values: F64, offsets: I64) -> F64:
    """Per-segment min of the finite values; NaN where a segment has none."""
    return _reduceat(np.fmin, np.where(np.isinf(values), np.nan, values), offsets, np.nan)


# ---------------------------------------------------------------------------------------------- private


def _offsets(lengths: Sequence[int]) -> I64:
    out = np.zeros(len(lengths) + 1, dtype=np.int64)
    if lengths:
        np.cumsum(np.asarray(lengths, dtype=np.int64), out=out[1:])
    return out


def _check_offsets(name: str, offsets: object) -> None:
    if not isinstance(offsets, np.ndarray) or offsets.dtype != np.int64 or offsets.ndim != 1:
        raise BatchShapeError(name, "must be a 1-D int64 array")
    if offsets.shape[0] < 1:
        raise BatchShapeError(name, "needs at least one entry (0 for an empty batch)")
    if int(offsets[0]) != 0:
        raise BatchShapeError(name, f"must start at 0, starts at {int(offsets[0])}")
    if offsets.shape[0] > 1 and bool(np.any(np.diff(offsets) < 0)):
        bad = int(np.flatnonzero(np.diff(offsets) < 0)[0])
        raise BatchShapeError(name, "must be non-decreasing", bad)


def _check_array(name: str, values: object, dtype: type[np.generic], length: int) -> None:
    if not isinstance(values, np.ndarray):
        raise BatchShapeError(name, f"must be a NumPy array, got {type(values).__name__}")
    if values.dtype != dtype:
        raise BatchShapeError(name, f"dtype {values.dtype}, expected {np.dtype(dtype)}")
    if values.shape != (length,):
        raise BatchShapeError(name, f"shape {values.shape}, expected ({length},)")


def _session_of(offsets: I64, row: int) -> int:
    """Index of the session owning sample ``row``."""
    return int(np.searchsorted(offsets, row, side="right")) - 1


def segment_searchsorted(sorted_values: F64, offsets: I64, segments: NDArray[np.intp], queries: F64) -> I64:
    """For each query ``q`` in segment ``s``: the global row of the last value ``<= q`` within that segment,
    ``-1`` when there is none (``sorted_values`` ascending within every segment, e.g. ``t_s``).

    A vectorised bisection over all queries at once (``log2`` of the longest segment iterations), so a few
    thousand look-ups cost microseconds and need no global sort key.
    """
    lo = offsets[segments].astype(np.int64)  # invariant: rows < lo are <= q (or outside), rows >= hi are > q
    hi = offsets[segments + 1].astype(np.int64)
    start = lo.copy()
    while True:
        active = lo < hi
        if not active.any():
            break
        mid = (lo + hi) // 2
        mid_c = np.where(active, mid, 0)
        le = np.zeros(lo.shape[0], dtype=bool)
        if sorted_values.shape[0]:
            le = sorted_values[np.minimum(mid_c, sorted_values.shape[0] - 1)] <= queries
        lo = np.where(active & le, mid + 1, lo)
        hi = np.where(active & ~le, mid, hi)
    found = lo - 1
    return np.where(found >= start, found, -1)
