"""All per-session metrics of a :class:`~analytics.batch.SessionBatch` in one call, vectorised over sessions.

``compute(batch)`` returns :class:`SessionMetrics`: one ``(n,)`` float64 array per metric (``zone5_s`` is
``(n, 5)``, ``acsm_band_s`` ``(n, 4)``), NaN where a metric cannot be computed for a session (no heart rate,
no power, unknown FTP/sex/age ...). ``row(i)`` is the JSON-ready summary of session ``i`` (NaN → ``None``)
that the jobs store with :data:`ALGORITHM_VERSION`.

Conventions live in the metric modules: time weights and quality in :mod:`analytics.quality`, heart rate in
:mod:`analytics.hr`, HRV in :mod:`analytics.hrv`, power in :mod:`analytics.power`, energy and distance in
:mod:`analytics.energy`. Here only:

``moving_s``  time-weighted seconds with work (power > 0, speed > 0 or cadence > 0); NaN without a work
              channel.
``hrv_*``     NaN when more than 20 % of the beats were corrected (``rr_corrected_pct``), see
              :data:`analytics.hrv.MAX_CORRECTED_PCT`; ``hrv_beats`` is the number of RR intervals received.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import math
import platform
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields
from typing import Final

import numpy as np
from numpy.typing import NDArray

from analytics import energy, hr, hrv, power, quality
from analytics.batch import SessionBatch, segment_ids, segment_sum
from analytics.version import ALGORITHM_VERSION as ALGORITHM_VERSION  # stored with every summary

BLOCK_SAMPLES: Final[int] = 1 << 18
HEAP_MMAP_THRESHOLD_BYTES: Final[int] = 32 << 20
"""glibc ``M_MMAP_THRESHOLD`` set by :func:`keep_block_memory`: requests up to this come from the heap."""
HEAP_TRIM_THRESHOLD_BYTES: Final[int] = 128 << 20
"""glibc ``M_TRIM_THRESHOLD`` set by :func:`keep_block_memory`: free heap kept before returning memory."""
_M_TRIM_THRESHOLD: Final[int] = -1  # <malloc.h>
_M_MMAP_THRESHOLD: Final[int] = -3

F64 = NDArray[np.float64]
logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SessionMetrics:
    """One (n,) float64 array per metric (NaN = not computable), named with units."""

    duration_s: F64
    recorded_s: F64
    moving_s: F64
    distance_m: F64
    distance_source: F64
    energy_machine_kcal: F64
    energy_hr_kcal: F64
    energy_acsm_kcal: F64
    energy_kcal: F64
    energy_source: F64
    hr_avg_bpm: F64
    hr_max_bpm: F64
    hr_max_used_bpm: F64
    intensity_basis: F64
    zone5_s: F64
    acsm_band_s: F64
    trimp_banister: F64
    trimp_edwards: F64
    effort_points: F64
    min_ge_84pct_hrmax: F64
    mvpa_min: F64
    moderate_min: F64
    vigorous_min: F64
    hrr60_bpm: F64
    hrr120_bpm: F64
    hrv_beats: F64
    rr_corrected_pct: F64
    hrv_mean_nn_ms: F64
    hrv_sdnn_ms: F64
    hrv_rmssd_ms: F64
    hrv_sdsd_ms: F64
    hrv_pnn50_pct: F64
    hrv_vlf_ms2: F64
    hrv_lf_ms2: F64
    hrv_hf_ms2: F64
    hrv_lf_hf: F64
    hrv_total_ms2: F64
    avg_power_w: F64
    max_power_w: F64
    np_w: F64
    if_: F64
    tss: F64
    wbal_min_j: F64
    quality_samples_received: F64
    quality_samples_expected: F64
    quality_received_pct: F64
    quality_gap_count: F64
    quality_gap_s: F64
    quality_max_gap_s: F64
    quality_hr_coverage: F64
    quality_hr_dropouts: F64
    quality_wear_fraction: F64

    @property
    def n(self) -> int:
        return int(self.duration_s.shape[0])

    def names(self) -> tuple[str, ...]:
        return tuple(f.name for f in fields(self))

    def row(self, i: int) -> dict[str, float | list[float] | None]:
        """JSON-ready summary of session ``i``: floats, lists for the zone arrays, ``None`` for NaN."""
        out: dict[str, float | list[float] | None] = {}
        for name in self.names():
            value = getattr(self, name)[i]
            if np.ndim(value) == 0:
                x = float(value)
                out[name] = None if math.isnan(x) else x
            elif np.all(np.isnan(value)):
                out[name] = None
            else:
                out[name] = [float(v) for v in value]
        return out


def compute(
    batch: SessionBatch,
    timings: dict[str, float] | None = None,
    block_samples: int = BLOCK_SAMPLES,
    workers: int = 1,
) -> SessionMetrics:
    """Every metric of every session; ``timings`` (if given) receives the seconds spent per stage.

    Sessions are processed in blocks of about ``block_samples`` samples (whole sessions; a longer session
    is a block of its own) so that the dozens of vectorised passes of every metric run over data that
    stays in the CPU cache; ``workers > 1`` runs blocks in threads (NumPy releases the GIL in its loops).
    Results do not depend on the blocking. Calls :func:`keep_block_memory` (once per process).
    """
    batch.validate()
    keep_block_memory()
    bounds = _blocks(batch, block_samples)
    if len(bounds) <= 1:
        return _compute_block(batch, timings)
    parts: list[SessionMetrics]
    if workers > 1:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            stage_sinks = [dict[str, float]() for _ in bounds]
            parts = list(
                pool.map(lambda ab, sink: _compute_block(batch.slice(*ab), sink), bounds, stage_sinks)
            )
        if timings is not None:
            for sink in stage_sinks:
                for key, value in sink.items():
                    timings[key] = timings.get(key, 0.0) + value / workers
    else:
        parts = [_compute_block(batch.slice(a, b), timings) for a, b in bounds]
    names = [f.name for f in fields(SessionMetrics)]
    return SessionMetrics(**{name: np.concatenate([getattr(p, name) for p in parts]) for name in names})


@functools.cache
def keep_block_memory() -> bool:
    """Let glibc's ``malloc`` reuse the memory of one block's temporaries for the next block.

    Every block allocates and frees some 20 MiB of NumPy temporaries (at ``BLOCK_SAMPLES``). glibc maps
    requests above ``M_MMAP_THRESHOLD`` afresh from the kernel and gives back free memory above
    ``M_TRIM_THRESHOLD`` at the top of its heap; by default both follow the largest block the process has
    freed so far (at most 32 MiB / 64 MiB). A process whose earlier arrays were all larger than 32 MiB — e.g.
    the benchmark's 10,000-session batch — keeps the thresholds below a block's working set, so each block
    gets its memory anew: a page fault and a zeroed page for every 4 KiB (measured: 2.9 M minor faults in
    ``compute()``, the HRV spectrum at 2.0 instead of 0.9 ms per session and the other stages up to 1.5×
    slower, while a 6,000-session batch, whose 22 MiB boolean temporaries had raised the thresholds, showed
    none).
    Fixing the thresholds at :data:`HEAP_MMAP_THRESHOLD_BYTES` and :data:`HEAP_TRIM_THRESHOLD_BYTES` makes
    the cost independent of the process's history, for up to 128 MiB of free heap kept by the process.

    Process-wide (``mallopt``), applied once; does nothing where the C library is not glibc. Returns whether
    the thresholds were set.
    """
    if sys.platform != "linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    applied = bool(
        mallopt(_M_MMAP_THRESHOLD, HEAP_MMAP_THRESHOLD_BYTES)
        and mallopt(_M_TRIM_THRESHOLD, HEAP_TRIM_THRESHOLD_BYTES)
    )
    logger.debug("glibc malloc thresholds for block temporaries applied: %s", applied)
    return applied


def _blocks(batch: SessionBatch, block_samples: int) -> list[tuple[int, int]]:
    """Session ranges with about ``block_samples`` samples (and proportionally many beats) each."""
    n = batch.n
    if n == 0:
        return [(0, 0)]
    # weigh beats like samples (a beat costs about as much as a sample across all metrics)
    size = batch.offsets + batch.rr_offsets
    targets = np.arange(block_samples, int(size[-1]) + block_samples, block_samples)
    cuts = np.unique(np.concatenate((np.clip(np.searchsorted(size, targets, side="left"), 1, n), [n])))
    starts = np.concatenate(([0], cuts[:-1]))
    return [(int(a), int(b)) for a, b in zip(starts, cuts, strict=True) if b > a]


def _compute_block(batch: SessionBatch, timings: dict[str, float] | None) -> SessionMetrics:
    clock = _Clock(timings)
    offsets = batch.offsets
    ids = segment_ids(offsets)
    weights = quality.time_weights(batch.t_s, offsets)
    hr_ok = quality.valid_hr(batch.hr_bpm)
    q = quality.session_quality(batch.t_s, batch.hr_bpm, offsets, batch.kind, weights=weights, hr_ok=hr_ok)
    work = (batch.power_w > 0) | (batch.speed_kmh > 0) | (batch.cadence_rpm > 0)
    t_end, has_channel = hr.exercise_end(
        batch.t_s, batch.power_w, batch.speed_kmh, batch.cadence_rpm, offsets
    )
    moving = np.where(has_channel, segment_sum(np.where(work, weights, 0.0), offsets), np.nan)
    clock.lap("quality")

    hr_max_used = hr.effective_hr_max(batch.hr_max_bpm, batch.age_y)
    h = hr.hr_metrics(
        batch.t_s,
        batch.hr_bpm,
        offsets,
        ids,
        weights,
        hr_ok,
        batch.hr_rest_bpm,
        hr_max_used,
        batch.sex,
        t_end,
    )
    clock.lap("hr")

    e = energy.energy_metrics(
        batch.hr_bpm,
        hr_ok,
        batch.power_w,
        batch.speed_kmh,
        batch.incline_pct,
        batch.distance_m,
        batch.energy_kcal,
        weights,
        offsets,
        batch.kind,
        batch.sex,
        batch.age_y,
        batch.weight_kg,
        hr_max_used,
        q.hr_coverage,
    )
    clock.lap("energy")

    p = power.power_metrics(batch.power_w, weights, offsets, batch.ftp_w)
    clock.lap("power")

    clean = hrv.clean_rr(batch.rr_ms, batch.rr_offsets)
    td = hrv.time_domain(clean.nn_ms, batch.rr_offsets)
    clock.lap("hrv_time")
    fd = hrv.frequency_domain(clean.nn_ms, batch.rr_offsets)
    clock.lap("hrv_frequency")
    reliable = clean.corrected_pct <= hrv.MAX_CORRECTED_PCT

    def gate(x: F64) -> F64:
        return np.where(reliable, x, np.nan)

    beats = np.diff(batch.rr_offsets).astype(np.float64)
    return SessionMetrics(
        duration_s=q.duration_s,
        recorded_s=q.recorded_s,
        moving_s=moving,
        distance_m=e.distance_m,
        distance_source=e.distance_source,
        energy_machine_kcal=e.energy_machine_kcal,
        energy_hr_kcal=e.energy_hr_kcal,
        energy_acsm_kcal=e.energy_acsm_kcal,
        energy_kcal=e.energy_kcal,
        energy_source=e.energy_source,
        hr_avg_bpm=h.hr_avg_bpm,
        hr_max_bpm=h.hr_max_bpm,
        hr_max_used_bpm=h.hr_max_used_bpm,
        intensity_basis=h.intensity_basis,
        zone5_s=h.zone5_s,
        acsm_band_s=h.acsm_band_s,
        trimp_banister=h.trimp_banister,
        trimp_edwards=h.trimp_edwards,
        effort_points=h.effort_points,
        min_ge_84pct_hrmax=h.min_ge_84pct_hrmax,
        mvpa_min=h.mvpa_min,
        moderate_min=h.moderate_min,
        vigorous_min=h.vigorous_min,
        hrr60_bpm=h.hrr60_bpm,
        hrr120_bpm=h.hrr120_bpm,
        hrv_beats=beats,
        rr_corrected_pct=clean.corrected_pct,
        hrv_mean_nn_ms=gate(td.mean_nn_ms),
        hrv_sdnn_ms=gate(td.sdnn_ms),
        hrv_rmssd_ms=gate(td.rmssd_ms),
        hrv_sdsd_ms=gate(td.sdsd_ms),
        hrv_pnn50_pct=gate(td.pnn50_pct),
        hrv_vlf_ms2=gate(fd.vlf_ms2),
        hrv_lf_ms2=gate(fd.lf_ms2),
        hrv_hf_ms2=gate(fd.hf_ms2),
        hrv_lf_hf=gate(fd.lf_hf),
        hrv_total_ms2=gate(fd.total_ms2),
        avg_power_w=p.avg_power_w,
        max_power_w=p.max_power_w,
        np_w=p.np_w,
        if_=p.if_,
        tss=p.tss,
        wbal_min_j=p.wbal_min_j,
        quality_samples_received=q.samples_received,
        quality_samples_expected=q.samples_expected,
        quality_received_pct=q.received_pct,
        quality_gap_count=q.gap_count,
        quality_gap_s=q.gap_s,
        quality_max_gap_s=q.max_gap_s,
        quality_hr_coverage=q.hr_coverage,
        quality_hr_dropouts=q.hr_dropouts,
        quality_wear_fraction=q.wear_fraction,
    )


class _Clock:
    def __init__(self, sink: dict[str, float] | None) -> None:
        self._sink = sink
        self._last = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        if self._sink is not None:
            self._sink[name] = self._sink.get(name, 0.0) + now - self._last
        self._last = now
