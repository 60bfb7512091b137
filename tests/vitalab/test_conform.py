"""``vitalab conform``: the pure check over observed messages with pinned times, and the command against a
real Mosquitto with the simulator publishing (a good device passes, a faulty one fails naming its faults)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import sys
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest
import typer
from typer.testing import CliRunner

from ingest.batch import Router
from simulators.faults import MALFORMED, FaultInjector, FaultRates
from simulators.fleet import Fleet
from simulators.publisher import FleetPublisher, gateway_client, now_ms
from tests.conftest import Mosquitto, free_port
from vitalab.cli_conform import register
from vitalab.conform import Observed, Rules, check
from vitalab.wire import (
    DeviceMeta,
    DeviceState,
    GatewayStatus,
    Sample,
    TelemetryMessage,
    TopicKind,
    device_topic,
    encode,
    gateway_status_topic,
)

T0 = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)
SITE = "gym-c"
DEVICE = "bike-007"
S = timedelta(seconds=1)


def topic(kind: TopicKind, site: str = SITE) -> str:
    return device_topic(site, DEVICE, kind)


@dataclass(frozen=True)
class Stream:
    """A device's messages as a subscriber sees them: retained meta and state, then one telemetry message
    per second, received ``lag`` after the device stamped it."""

    n: int = 20
    lag: timedelta = timedelta(milliseconds=50)
    skew: timedelta = timedelta(0)
    """Added to the device's timestamps (its clock is ahead by this much)."""
    lost: frozenset[int] = frozenset()
    meta: bool = True
    meta_retained: bool = True
    state: bool = True
    state_online: bool = True
    state_retained: bool = True
    gateway_birth: bool = False
    qos: int = 1
    site: str = SITE

    def messages(self) -> list[Observed]:
        out = []
        if self.gateway_birth:
            status = GatewayStatus(v=1, gateway="gw-1", online=True, t=T0, devices=[DEVICE])
            out.append(Observed(T0 - S, gateway_status_topic(self.site, "gw-1"), encode(status), True, 1))
        if self.meta:
            meta = DeviceMeta(v=1, device=DEVICE, kind="bike", vendor="Acme", model="X1")
            out.append(
                Observed(T0 - S, topic(TopicKind.META, self.site), encode(meta), self.meta_retained, 1)
            )
        if self.state:
            state = DeviceState(v=1, device=DEVICE, t=T0 - S, online=self.state_online, training="manual")
            out.append(
                Observed(T0 - S, topic(TopicKind.STATE, self.site), encode(state), self.state_retained, 1)
            )
        for k in range(self.n):
            if k in self.lost:
                continue
            out.append(telemetry(k, T0 + k * S + self.skew, T0 + k * S + self.lag, self.qos, self.site))
        return out


def telemetry(
    seq: int, t: datetime, received: datetime, qos: int = 1, site: str = SITE, **f: float
) -> Observed:
    sample = Sample(t=t, power_w=f.get("power_w", 180.0), hr_bpm=f.get("hr_bpm", 140.0))
    payload = encode(TelemetryMessage(v=1, device=DEVICE, seq=seq, samples=[sample]))
    return Observed(received, topic(TopicKind.TELEMETRY, site), payload, False, qos)


def judge(messages: list[Observed], *, end: datetime | None = None, rules: Rules = Rules()) -> Any:
    return check(
        messages,
        device=DEVICE,
        site=SITE,
        started_at=T0 - 2 * S,
        ended_at=end or T0 + 20 * S,
        router=Router(),
        rules=rules,
    )


def rules_of(report: Any) -> set[str]:
    return {v.rule for v in report.violations}


def test_a_good_device_conforms() -> None:
    report = judge(Stream().messages())
    assert report.ok, report.render()
    assert report.samples_stored == 20
    assert report.period_s == 1.0
    assert report.rate_hz == 1.0
    assert report.max_gap_s == 3.0
    assert (report.seq_first, report.seq_last, report.seq_missing) == (0, 19, 0)
    assert report.skew_median_s == pytest.approx(0.05)
    assert report.meta is not None
    assert report.meta.model == "X1"
    assert report.meta_retained
    assert report.state_retained
    assert report.messages == {"telemetry": 20, "meta": 1, "state": 1}
    assert "PASS" in report.render()
    assert json.loads(json.dumps(report.as_dict()))["ok"] is True


def _extra(messages: list[Observed], *more: Observed) -> list[Observed]:
    return sorted([*messages, *more], key=lambda m: m.received_at)


BAD_SAMPLE = telemetry(20, T0 + 19.5 * S, T0 + 19.6 * S, hr_bpm=999.0)


@pytest.mark.parametrize(
    ("name", "messages", "expected"),
    [
        ("one message lost", Stream(lost=frozenset({7})).messages(), {"seq_gap"}),
        ("four messages lost", Stream(lost=frozenset({7, 8, 9, 10})).messages(), {"seq_gap", "sample_gap"}),
        ("an implausible sample", _extra(Stream().messages(), BAD_SAMPLE), {"contract"}),
        (
            "a malformed message",
            _extra(
                Stream().messages(),
                Observed(T0 + 5.5 * S, topic(TopicKind.TELEMETRY), MALFORMED[0], False, 1),
            ),
            {"contract"},
        ),
        ("no meta", Stream(meta=False).messages(), {"no_meta"}),
        ("meta not retained", Stream(meta_retained=False).messages(), {"meta_not_retained"}),
        ("no state", Stream(state=False).messages(), {"no_state", "last_will"}),
        ("no state, behind a gateway", Stream(state=False, gateway_birth=True).messages(), {"no_state"}),
        ("state not retained", Stream(state_retained=False).messages(), {"state_not_retained", "last_will"}),
        ("state says offline", Stream(state_online=False).messages(), {"state_offline"}),
        ("clock behind", Stream(skew=-10 * S).messages(), {"clock_skew"}),
        ("clock ahead", Stream(skew=10 * S).messages(), {"clock_skew"}),
        ("telemetry at QoS 0", Stream(qos=0).messages(), {"qos"}),
        ("another site", Stream(site="gym-x").messages(), {"site"}),
        ("nothing but meta and state", Stream(n=0).messages(), {"no_telemetry"}),
    ],
)
def test_each_fault_is_named(name: str, messages: list[Observed], expected: set[str]) -> None:
    report = judge(messages)
    assert rules_of(report) == expected, (name, report.render())
    assert not report.ok
    assert "FAIL" in report.render()


def test_a_bad_sample_is_named_with_the_ingesters_reason_and_path() -> None:
    report = judge(_extra(Stream().messages(), BAD_SAMPLE))
    (v,) = report.violations
    assert (v.rule, v.reason, v.path, v.received_at) == (
        "contract",
        "implausible_value",
        "$.samples[0].hr_bpm",
        T0 + 19.6 * S,
    )
    assert report.samples_rejected == 1
    assert (report.seq_last, report.seq_missing) == (20, 0)  # its envelope is sound: its seq counts
    assert "implausible_value [$.samples[0].hr_bpm]" in report.render()


def test_each_message_is_judged_as_of_its_own_receive_time() -> None:
    """Samples 10 minutes ahead of their receipt are refused (the ingester takes 5 minutes ahead at most);
    4 minutes ahead they are stored and only the skew rule speaks."""
    report = judge(Stream(skew=timedelta(minutes=10)).messages(), rules=Rules(max_skew_s=3600))
    assert {(v.rule, v.reason, v.path) for v in report.violations} == {
        ("contract", "timestamp_out_of_range", "$.samples[0].t")
    }
    assert len(report.violations) == 20
    assert report.samples_stored == 0
    assert judge(Stream(skew=timedelta(minutes=4)).messages(), rules=Rules(max_skew_s=3600)).ok
    assert rules_of(judge(Stream(skew=timedelta(minutes=4)).messages())) == {"clock_skew"}


def _swap(messages: list[Observed], a: int, b: int) -> list[Observed]:
    """Messages ``a`` and ``b`` arrive the other way round (receive times kept in order)."""
    out = list(messages)
    out[a], out[b] = (
        replace(out[b], received_at=out[a].received_at),
        replace(out[a], received_at=out[b].received_at),
    )
    return out


def _restart(messages: list[Observed], at: int) -> list[Observed]:
    """The device restarts before telemetry message ``at``: its counter starts again from 0."""
    out = []
    for m in messages:
        if m.topic.endswith("/telemetry"):
            msg = msgspec.json.decode(m.payload, type=TelemetryMessage)
            if msg.seq >= at:
                m = replace(m, payload=encode(msgspec.structs.replace(msg, seq=msg.seq - at)))
        out.append(m)
    return out


def test_what_at_least_once_delivery_and_restarts_allow() -> None:
    good = Stream().messages()
    resent = _extra(good, replace(good[7], received_at=good[7].received_at + timedelta(milliseconds=10)))
    report = judge(resent)
    assert report.ok, report.render()
    assert (report.seq_repeated, report.samples_repeated) == (1, 1)

    report = judge(_swap(good, 7, 8))
    assert report.ok, report.render()
    assert report.seq_late == 1

    report = judge(_restart(good, 10))
    assert report.ok, report.render()
    assert (report.seq_restarts, report.seq_first, report.seq_last, report.seq_missing) == (1, 0, 9, 0)


def test_a_device_that_stops_sending_is_silent() -> None:
    report = judge(Stream().messages(), end=T0 + 30 * S)
    (v,) = report.violations
    assert v.rule == "silence"
    assert "end of the watch" in v.detail
    report = judge(Stream().messages(), end=T0 + 30 * S, rules=Rules(max_gap_s=15))
    assert report.ok


# --- the command against a real broker, with the simulator publishing ---------------------------------


async def run_conform(
    mosquitto: Mosquitto, device: str, seconds: float, publish: Callable[[], Coroutine[Any, Any, None]]
) -> tuple[int, dict[str, Any]]:
    """``vitalab conform`` in a process of its own; ``publish`` starts once it has subscribed and is stopped
    when it exits. Returns its exit code and its JSON report."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VITALAB_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "vitalab.cli_conform",
        *("--mqtt-url", mosquitto.url, "--device", device, "--site", SITE),
        *("--seconds", str(seconds), "--max-gap-s", "5", "--json"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    assert proc.stderr is not None
    ready = await asyncio.wait_for(proc.stderr.readline(), 120)
    assert b"watching" in ready, ready
    task = asyncio.create_task(publish())
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), seconds + 120)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert proc.returncode is not None
    return proc.returncode, json.loads(out)


@pytest.mark.asyncio
async def test_the_simulated_device_conforms(mosquitto: Mosquitto) -> None:
    fleet = Fleet.build(SITE, 1, seed=5, mix=("bike",))
    device = fleet.devices[0].device_id

    async def simulate() -> None:
        async with gateway_client(mosquitto.target, "gw-good", SITE) as client:
            publisher = FleetPublisher(client, fleet, "gw-good")
            await publisher.announce()
            await publisher.run_realtime(samples_per_message=1)

    code, report = await run_conform(mosquitto, device, 6, simulate)
    assert report["violations"] == [], report
    assert code == 0
    assert report["ok"] is True
    assert report["messages"]["telemetry"] >= 4
    assert report["samples"]["rate_hz"] == pytest.approx(1.0, rel=0.2)
    assert report["meta_retained"]
    assert report["state_retained"]
    assert report["gateways"] == ["gw-good"]
    assert report["seq"]["missing"] == 0
    assert abs(report["clock_skew_s"]["median"]) < 2


@pytest.mark.asyncio
async def test_a_faulty_device_fails_with_its_faults_named(mosquitto: Mosquitto) -> None:
    fleet = Fleet.build(SITE, 1, seed=5, mix=("bike",))
    dev = fleet.devices[0]
    # every message comes after a malformed one, and the device's clock is off by up to 30 s
    faults = FaultInjector(FaultRates(malformed=1.0, clock_skew=1.0, max_skew_s=30.0), seed=3)
    lost = range(2, 8)

    async def simulate() -> None:  # no meta, no state, no gateway birth
        async with gateway_client(mosquitto.target, "gw-faulty", SITE) as client:
            publisher = FleetPublisher(client, fleet, "gw-faulty", faults=faults)
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            for k in itertools.count():
                ((_, sample),) = fleet.tick(now_ms())
                if k in lost:  # lost on the way: their seq numbers and samples never arrive
                    dev.seq += 1
                elif k == 9:  # a sensor glitch
                    await publisher.publish(dev, [msgspec.structs.replace(sample, hr_bpm=999.0)])
                else:
                    await publisher.publish(dev, [sample])
                await publisher.drain()
                await asyncio.sleep(max(0.0, t0 + k + 1 - loop.time()))

    code, report = await run_conform(mosquitto, dev.device_id, 14, simulate)
    skew_s = faults.log.skew_s[dev.device_id]
    assert abs(skew_s) > 2  # what the seed gives: the device's clock is off by more than the limit
    assert code == 1, report
    rules = {v["rule"] for v in report["violations"]}
    assert rules == {"contract", "seq_gap", "sample_gap", "clock_skew", "no_meta", "no_state", "last_will"}
    contract = {(v["reason"], v["path"]) for v in report["violations"] if v["rule"] == "contract"}
    assert ("implausible_value", "$.samples[0].hr_bpm") in contract
    malformed = {r for r, _ in contract} - {"implausible_value"}
    assert malformed
    assert malformed <= {"malformed", "unsupported_version", "schema"}
    assert report["seq"]["missing"] == len(lost)
    assert report["clock_skew_s"]["median"] == pytest.approx(-skew_s, abs=1.5)


def test_the_command_cannot_run_without_a_broker_or_with_a_bad_id() -> None:
    app = typer.Typer()
    register(app)
    runner = CliRunner()
    nobody = f"mqtt://127.0.0.1:{free_port()}"
    r = runner.invoke(app, ["--device", "bike 1", "--mqtt-url", nobody])
    assert (r.exit_code, "--device" in r.output) == (2, True)
    r = runner.invoke(app, ["--device", "bike-1", "--mqtt-url", "http://example.invalid"])
    assert (r.exit_code, "--mqtt-url" in r.output) == (2, True)
    r = runner.invoke(app, ["--device", "bike-1", "--mqtt-url", nobody, "--seconds", "1"])
    assert r.exit_code == 2
    assert "broker" in r.output
