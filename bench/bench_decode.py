"""Benchmark: the ingester's per-message CPU path (decode + validate + rows), against its limits.

Prints messages/s and samples/s for 1 and 10 samples per message, for
- ``json.loads``: the stdlib floor most Python MQTT code starts from,
- ``msgspec untyped``: parsing alone with the fastest JSON parser here, no validation (the physical limit
  of any JSON decoder in this process),
- ``decode_telemetry``: our strict typed decode with bounds, paths and time-window checks,
- ``Router.add``: decode plus the row tuples the writer COPYs (what the ingest loop does per message);
then what bad input costs the same ``Router.add`` (a dead letter instead of rows), against a valid message of
the same kind: a 2 KB payload nested 1,000 levels deep, a meta with a NUL in ``vendor``, one implausible
sample among 10, and 256 KB of nested arrays (the largest payload accepted for decoding).

Run: ``python bench/bench_decode.py [--seconds 2]``. Not a test; numbers vary ±20 % between runs.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import msgspec

from ingest.batch import Batch, Router
from ingest.source import Inbound
from simulators.fleet import Fleet
from vitalab.wire import TelemetryMessage, decode_telemetry, encode, telemetry_topic


def payloads(samples_per_message: int, n: int = 200) -> list[bytes]:
    fleet = Fleet.build("bench", 4, seed=1)
    start = datetime.now(UTC) - timedelta(hours=1)
    out: list[bytes] = []
    ticks = fleet.history(start, n * samples_per_message // 4 + samples_per_message)
    per_device: dict[str, list] = {}  # type: ignore[type-arg]
    for tick in ticks:
        for dev, s in tick:
            buf = per_device.setdefault(dev.device_id, [])
            buf.append(s)
            if len(buf) == samples_per_message:
                out.append(encode(TelemetryMessage(v=1, device=dev.device_id, seq=len(out), samples=buf)))
                per_device[dev.device_id] = []
    return out[:n]


def rate(fn: Callable[[bytes], object], data: list[bytes], seconds: float) -> float:
    done = 0
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for p in data:
            fn(p)
        done += len(data)
    return done / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=2.0)
    args = ap.parse_args()
    now = datetime.now(UTC)
    router = Router()
    untyped = msgspec.json.Decoder()
    print(f"{'path':<22}{'samples/msg':>12}{'msg/s':>12}{'samples/s':>14}{'µs/msg':>9}  vs limit")
    for k in (1, 10):
        data = payloads(k)
        size = sum(map(len, data)) / len(data)
        device_of = {p: msgspec.json.decode(p)["device"] for p in data}

        def route(p: bytes, device_of: dict[bytes, str] = device_of) -> None:
            d = device_of[p]
            msg = Inbound(telemetry_topic("bench", d), p, 1, False, 1, 1, time.time())
            router.add(Batch(), msg)

        limit = rate(untyped.decode, data, args.seconds)
        for name, fn in (
            ("json.loads", json.loads),
            ("msgspec untyped", untyped.decode),
            ("decode_telemetry", lambda p, dev=device_of: decode_telemetry(p, topic_device=dev[p], now=now)),
            ("Router.add", route),
        ):
            r = limit if name == "msgspec untyped" else rate(fn, data, args.seconds)
            print(f"{name:<22}{k:>12}{r:>12,.0f}{r * k:>14,.0f}{1e6 / r:>9.1f}  {r / limit:6.0%}")
        print(f"  ({size:.0f} B per message)")
    bad_input(router, now, args.seconds)


def bad_input(router: Router, now: datetime, seconds: float) -> None:
    ts = (now - timedelta(minutes=1)).isoformat().encode()
    sample = b'{"t":"' + ts + b'","hr_bpm":120}'
    bad_sample = b'{"t":"' + ts + b'","hr_bpm":999}'
    ten = b'{"v":1,"device":"dev-1","seq":1,"samples":[' + b",".join([sample] * 9 + [bad_sample]) + b"]}"
    ten_ok = ten.replace(b"999", b"120")
    meta_ok = b'{"v":1,"device":"dev-1","kind":"bike","vendor":"Acme","model":"B1"}'
    cases = [
        ("1,000 deep, 2 KB", "telemetry", b"[" * 1000 + b"]" * 1000, ten_ok),
        ("NUL in meta vendor", "meta", meta_ok.replace(b"Acme", b"Ac\\u0000me"), meta_ok),
        ("1 bad sample of 10", "telemetry", ten, ten_ok),
        ("256 KB of arrays", "telemetry", b"[" * (128 * 1024) + b"]" * (128 * 1024), ten_ok),
    ]
    print(f"\n{'bad input (Router.add)':<24}{'µs/msg':>9}{'valid µs/msg':>14}  reason")
    for name, kind, payload, valid in cases:
        topic = f"vitalab/v1/bench/dev/dev-1/{kind}"

        def route(p: bytes, topic: str = topic) -> Batch:
            batch = Batch()
            router.add(batch, Inbound(topic, p, 1, False, 1, 1, now.timestamp()))
            return batch

        reason = route(payload).dead[0].reason
        bad_r, ok_r = rate(route, [payload], seconds / 4), rate(route, [valid], seconds / 4)
        print(f"{name:<24}{1e6 / bad_r:>9.1f}{1e6 / ok_r:>14.1f}  {reason}")


if __name__ == "__main__":
    main()
