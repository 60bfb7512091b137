"""Benchmark: the gateway's per-frame CPU path (decode, decode + normalise to a wire Sample), against limits.

For one real frame of each main source (taken from tests/data/captures, so the numbers are for frames
devices actually send), prints frames/s and µs/frame for

- ``unpack floor``: ``struct.unpack_from`` of exactly that frame's fields with a precompiled format, no
  checks, no record: the cost of reading those bytes at all in this interpreter (the physical limit a decoder
  is measured against here);
- ``decode_frame``: our decoder (length checks, flags, quirks, sentinels, frozen record); the Concept2 rower
  frame with the quirk profile its Device Information Service selects, the Skillrow frame per the
  specification (reserved flag bit 13 ignored, its 4 bytes kept);
- ``+ to_sample``: decode and normalise to a ``vitalab.wire.Sample`` (bounds checked), what a gateway does
  per notification;

and how many devices sending once a second (FTMS/HRM notify at ~1 Hz; ANT+ FE-C broadcasts at 4 Hz, so
divide by 4) one core could serve at the decode + normalise rate.

Run: ``python bench/bench_gateway_decode.py [--seconds 1]``. Not a test; numbers vary ±20 % between runs
and with other load on the machine.
"""

from __future__ import annotations

import argparse
import json
import struct
import time
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

from gateway.decode import canonical_source, decode_frame
from gateway.normalize import to_sample

CAPTURES = Path(__file__).resolve().parent.parent / "tests" / "data" / "captures"

# (label, capture id, struct format of the whole frame as a special-purpose parser would read it)
CASES: tuple[tuple[str, str, str], ...] = (
    ("indoor bike 2ad2", "flux-elite-suito-comment", "<HHHHBHH"),  # flags speed cad dist(u24) power elapsed
    ("treadmill 2acd", "tmiw-life-fitness-treadmill-L95", "<HHHHBhhHHHHBH"),
    ("rower 2ad1", "tmiw-concept2-old-ftms-L93", "<HBHBHHhhhBH"),  # without the trailing byte: see below
    ("rower, reserved bit", "tmiw-technogym-skillrow-L100", "<HBHBHHB"),  # without the 4 bytes bit 13 adds
    ("cross trainer 2ace", "tmiw-life-fitness-elliptical-L102", "<HBHHHBHHHHHhhHHHBBH"),
    ("heart rate 2a37", "tmiw-hrm-polar-h7-0", "<BBHH"),
    ("cycling power 2a63", "tmiw-power-meter-sample", "<HhHHH"),
    ("csc 2a5b", "flux-csc-series-0", "<BHH"),
    ("ant fe 16", "antplus-fe16-general", "<BBBBHBB"),
    ("ant fe 25", "antplus-fe25-cadence-power", "<BBBHHB"),
    ("ant hrm 4", "antplus-hrm4-rr-wrap", "<BBHHBB"),
)


def load(capture_id: str) -> tuple[str, bytes, str | None]:
    for path in CAPTURES.glob("*.json"):
        for entry in json.loads(path.read_text())["entries"]:
            if entry["id"] == capture_id:
                return entry["source"], bytes.fromhex(entry["hex"]), entry["model"]
    raise SystemExit(f"no capture {capture_id!r} in {CAPTURES}")


def rate(fn: Callable[[], object], seconds: float) -> float:
    """Calls per second of ``fn``: the best of seven runs of ``seconds`` / 7 each (the best run is the one
    least disturbed by other load on the machine)."""
    best = 0.0
    for _ in range(7):
        done, t0 = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - t0) < seconds / 7:
            for _ in range(200):
                fn()
            done += 200
        best = max(best, done / elapsed)
    return best


def normalising(source: str, frame: bytes, model: str | None, now: datetime) -> Callable[[], object]:
    return lambda: to_sample(decode_frame(source, frame, model=model), now)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=1.0, help="per measurement")
    args = ap.parse_args()
    now = datetime.now(UTC)
    print(
        f"{'source':<19}{'bytes':>6}{'unpack floor/s':>15}{'decode/s':>10}{'µs':>6}{'of floor':>9}"
        f"{'+ to_sample/s':>14}{'µs':>6}{'1 Hz devices/core':>18}"
    )
    worst = float("inf")
    for label, capture_id, fmt in CASES:
        source, frame, model = load(capture_id)
        source = canonical_source(source)
        floor_struct = struct.Struct(fmt)
        body = frame[: floor_struct.size]  # bytes after the fields (a quirk's, a reserved bit's) not read
        assert floor_struct.size == len(body), (label, floor_struct.size, len(frame))
        floor = rate(partial(floor_struct.unpack_from, body), args.seconds)
        dec = rate(partial(decode_frame, source, frame, model=model), args.seconds)
        norm = rate(normalising(source, frame, model, now), args.seconds)
        worst = min(worst, norm)
        print(
            f"{label:<19}{len(frame):>6}{floor:>15,.0f}{dec:>10,.0f}{1e6 / dec:>6.1f}{dec / floor:>9.1%}"
            f"{norm:>14,.0f}{1e6 / norm:>6.1f}{norm:>18,.0f}"
        )
    print(
        f"\nslowest decode + normalise: {worst:,.0f} frames/s on one core = {worst:,.0f} BLE devices at "
        f"1 Hz, {worst / 4:,.0f} ANT+ FE-C devices at 4 Hz (one gym floor is 10-200 devices)."
    )


if __name__ == "__main__":
    main()
