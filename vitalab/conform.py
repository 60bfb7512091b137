"""Conformance of one device to the wire contract, judged from what it publishes (``vitalab conform``).

:func:`check` is pure: it takes the messages seen on the device's topics, each with its receive time,
retained flag and delivery QoS (:class:`Observed`), and the watch window, and returns a :class:`Report`.
Every message is judged by the ingester's own rules (:func:`ingest.verdict.judge`: the same decoder, limits
and dead-letter reasons, with the receive time as "now"); on top of that the stream is checked:

* ``contract``: each dead letter the ingester would write (reason and JSON path);
* ``sample_gap``: consecutive samples (device time) further apart than ``max_gap_s`` (default: 3 times
  the device's own period, the median interval between its samples);
* ``silence``: no telemetry for longer than that at the start or the end of the watch;
* ``seq_gap``: telemetry ``seq`` numbers that never arrived (a drop to 0 is a restart, not a gap;
  a repeated seq is a resend, which at-least-once delivery allows);
* ``clock_skew``: the median, over messages, of receive time minus the newest sample's time beyond
  ``max_skew_s`` either way (a device clock ahead or behind);
* ``no_meta`` / ``meta_not_retained``, ``no_state`` / ``state_not_retained``: the retained meta and state
  the contract asks for (retained flags are seen on the retained copies a subscription gets and, on MQTT 5,
  on live messages with retain-as-published);
* ``last_will``: a last will cannot be seen by another client (the broker holds it until the connection
  dies). What is checked is that the device is announced online in a way a will takes back: its retained
  state says ``online: true`` (a device that connects itself sets a will publishing ``online: false``,
  retained, on its state topic), or a retained gateway status says ``online: true`` and lists the device
  (the gateway's will says it is offline); and ``state_offline``: a state saying offline while telemetry
  keeps coming;
* ``qos``: telemetry, meta or state delivered at QoS 0 to a QoS 1 subscription (the contract says QoS 1);
* ``site``: messages under another site than the one given, or under more than one site.

The adapter :func:`watch` subscribes with aiomqtt and collects :class:`Observed` messages for a while.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import statistics
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiomqtt
import msgspec
from paho.mqtt.subscribeoptions import SubscribeOptions

from ingest.batch import Router
from ingest.verdict import Verdict, judge
from vitalab.settings import MqttTarget
from vitalab.wire import DeviceMeta, DeviceState, GatewayStatus, TopicKind
from vitalab.wire.topics import PREFIX

MAX_LISTED = 20
"""Violations of one rule listed in the text report (the JSON report has every one)."""


@dataclass(frozen=True, slots=True)
class Observed:
    """One message as a subscriber saw it."""

    received_at: datetime
    topic: str
    payload: bytes
    retained: bool
    qos: int | None = None
    """The QoS it was delivered with (None: not known)."""


@dataclass(frozen=True, slots=True)
class Rules:
    max_skew_s: float = 2.0
    """Largest accepted median of (receive time - newest sample time) per message, either way."""
    max_gap_s: float | None = None
    """Largest accepted interval between consecutive samples; None: ``gap_factor`` x the device's period."""
    gap_factor: float = 3.0


@dataclass(frozen=True, slots=True)
class Violation:
    rule: str
    detail: str
    topic: str | None = None
    received_at: datetime | None = None
    reason: str | None = None
    """The ingester's dead-letter reason (rule ``contract``)."""
    path: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "detail": self.detail,
            "topic": self.topic,
            "received_at": _iso(self.received_at),
            "reason": self.reason,
            "path": self.path,
        }


@dataclass(frozen=True, slots=True)
class Gap:
    after: datetime
    before: datetime

    @property
    def seconds(self) -> float:
        return (self.before - self.after).total_seconds()


@dataclass(slots=True)
class Report:
    device: str
    site: str | None
    started_at: datetime
    ended_at: datetime
    messages: Counter[str] = field(default_factory=Counter)
    samples_stored: int = 0
    samples_rejected: int = 0
    samples_repeated: int = 0
    period_s: float | None = None
    max_gap_s: float | None = None
    gaps: list[Gap] = field(default_factory=list)
    seq_first: int | None = None
    seq_last: int | None = None
    seq_missing: int = 0
    seq_restarts: int = 0
    seq_late: int = 0
    seq_repeated: int = 0
    skew_median_s: float | None = None
    skew_min_s: float | None = None
    skew_max_s: float | None = None
    meta: DeviceMeta | None = None
    meta_retained: bool = False
    state: DeviceState | None = None
    state_retained: bool = False
    gateways: list[str] = field(default_factory=list)
    """Gateways whose retained online status lists the device."""
    violations: list[Violation] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations

    @property
    def rate_hz(self) -> float | None:
        return None if not self.period_s else 1.0 / self.period_s

    def as_dict(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "site": self.site,
            "started_at": _iso(self.started_at),
            "ended_at": _iso(self.ended_at),
            "ok": self.ok,
            "messages": dict(sorted(self.messages.items())),
            "samples": {
                "stored": self.samples_stored,
                "rejected": self.samples_rejected,
                "repeated": self.samples_repeated,
                "period_s": self.period_s,
                "rate_hz": self.rate_hz,
                "max_gap_s": self.max_gap_s,
                "gaps": [
                    {"after": _iso(g.after), "before": _iso(g.before), "s": g.seconds} for g in self.gaps
                ],
            },
            "seq": {
                "first": self.seq_first,
                "last": self.seq_last,
                "missing": self.seq_missing,
                "restarts": self.seq_restarts,
                "late": self.seq_late,
                "repeated": self.seq_repeated,
            },
            "clock_skew_s": {"median": self.skew_median_s, "min": self.skew_min_s, "max": self.skew_max_s},
            "meta": msgspec.to_builtins(self.meta) if self.meta else None,
            "meta_retained": self.meta_retained,
            "state": msgspec.to_builtins(self.state) if self.state else None,
            "state_retained": self.state_retained,
            "gateways": self.gateways,
            "violations": [v.as_dict() for v in self.violations],
        }

    def render(self) -> str:
        """The report as text for a terminal or a CI log."""
        span = (self.ended_at - self.started_at).total_seconds()
        lines = [
            f"device {self.device} (site {self.site or 'any'}), watched {span:.0f} s from "
            f"{_iso(self.started_at)}",
            "messages: " + (", ".join(f"{k} {n}" for k, n in sorted(self.messages.items())) or "none"),
            f"samples: {self.samples_stored} stored, {self.samples_rejected} rejected, "
            f"{self.samples_repeated} repeated",
        ]
        if self.period_s:
            lines.append(
                f"rate: {self.rate_hz:.3g} Hz (period {self.period_s:.3f} s); "
                f"gaps over {self.max_gap_s:.3g} s: {len(self.gaps)}"
            )
        if self.seq_first is not None:
            lines.append(
                f"seq: {self.seq_first} .. {self.seq_last}, {self.seq_missing} missing, "
                f"{self.seq_repeated} repeated, {self.seq_late} late, {self.seq_restarts} restarts"
            )
        if self.skew_median_s is not None:
            lines.append(
                f"clock skew (receive - device time): median {self.skew_median_s:+.3f} s "
                f"(min {self.skew_min_s:+.3f}, max {self.skew_max_s:+.3f})"
            )
        meta = self.meta
        lines.append(
            "meta: "
            + (
                f"{meta.kind} {meta.vendor or ''} {meta.model or ''} "
                f"({'retained' if self.meta_retained else 'NOT retained'})"
                if meta
                else "none"
            )
        )
        state = self.state
        lines.append(
            "state: "
            + (
                f"{'online' if state.online else 'offline'}"
                f"{', ' + state.training if state.training else ''} "
                f"({'retained' if self.state_retained else 'NOT retained'})"
                if state
                else "none"
            )
        )
        if self.gateways:
            lines.append(f"announced online by gateway(s): {', '.join(self.gateways)}")
        lines.append(
            "last will: not observable by another client; checked: a retained online state, or a retained "
            "online gateway status listing the device"
        )
        if self.ok:
            lines.append("PASS: no violations")
            return "\n".join(lines)
        lines.append(f"FAIL: {len(self.violations)} violation(s)")
        shown: Counter[str] = Counter()
        for v in self.violations:
            shown[v.rule] += 1
            if shown[v.rule] > MAX_LISTED:
                continue
            where = f" [{v.path}]" if v.path else ""
            when = f" at {_iso(v.received_at)}" if v.received_at else ""
            lines.append(f"  {v.rule}{': ' + v.reason if v.reason else ''}{where}{when}: {v.detail}")
        for rule, n in sorted(shown.items()):
            if n > MAX_LISTED:
                lines.append(f"  ... {n - MAX_LISTED} more {rule} violation(s) (--json lists all)")
        return "\n".join(lines)


def _iso(t: datetime | None) -> str | None:
    return None if t is None else t.astimezone(UTC).isoformat().replace("+00:00", "Z")


class _Seq(msgspec.Struct):
    seq: int | None = None


def _seq_of(payload: bytes) -> int | None:
    try:
        return msgspec.json.decode(payload, type=_Seq).seq
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


@dataclass(frozen=True, slots=True)
class _Judged:
    seen: Observed
    verdict: Verdict


def check(
    observed: Sequence[Observed],
    *,
    device: str,
    site: str | None,
    started_at: datetime,
    ended_at: datetime,
    router: Router,
    rules: Rules = Rules(),
) -> Report:
    """The conformance report of ``device`` from the messages seen between ``started_at`` and
    ``ended_at`` (in the order received)."""
    report = Report(device, site, started_at, ended_at)
    mine: list[_Judged] = []
    statuses: list[_Judged] = []
    for seen in observed:
        verdict = judge(seen.topic, seen.payload, now=seen.received_at, router=router, retained=seen.retained)
        parsed = verdict.parsed
        if parsed is None or parsed.source != device or parsed.kind is TopicKind.GATEWAY_STATUS:
            if parsed is not None and parsed.kind is TopicKind.GATEWAY_STATUS:
                statuses.append(_Judged(seen, verdict))
            continue
        mine.append(_Judged(seen, verdict))
        report.messages[parsed.kind.value] += 1
        for dead in verdict.dead:
            report.violations.append(
                Violation("contract", dead.detail, seen.topic, seen.received_at, dead.reason, dead.path)
            )
    _sites(report, mine)
    _qos(report, mine)
    telemetry = [j for j in mine if j.verdict.parsed and j.verdict.parsed.kind is TopicKind.TELEMETRY]
    if not telemetry:
        report.violations.append(Violation("no_telemetry", "no telemetry message during the watch"))
    _samples(report, telemetry, rules)
    _silence(report, telemetry, rules)
    _seq(report, telemetry)
    _skew(report, telemetry, rules)
    _retained(report, mine)
    _liveness(report, mine, statuses, telemetry)
    return report


def _sites(report: Report, mine: list[_Judged]) -> None:
    sites = Counter(j.verdict.parsed.site for j in mine if j.verdict.parsed)
    if report.site is not None:
        for other, n in sorted(sites.items()):
            if other != report.site:
                report.violations.append(
                    Violation("site", f"{n} message(s) under site {other!r}, not {report.site!r}")
                )
    elif len(sites) > 1:
        report.violations.append(
            Violation(
                "site",
                f"messages under {len(sites)} sites ({', '.join(sorted(sites))}); a device "
                "belongs to one site",
            )
        )


def _qos(report: Report, mine: list[_Judged]) -> None:
    low: Counter[str] = Counter()
    for j in mine:
        kind = j.verdict.parsed.kind if j.verdict.parsed else None
        if kind in (TopicKind.TELEMETRY, TopicKind.META, TopicKind.STATE) and j.seen.qos == 0:
            low[str(kind)] += 1
    for name, n in sorted(low.items()):
        report.violations.append(
            Violation("qos", f"{n} {name} message(s) published at QoS 0; the contract says QoS 1")
        )


def _samples(report: Report, telemetry: list[_Judged], rules: Rules) -> None:
    times: list[datetime] = []
    for j in telemetry:
        times.extend(row["t"] for row in j.verdict.rows)
        report.samples_rejected += sum(1 for d in j.verdict.dead if (d.path or "").startswith("$.samples["))
    report.samples_stored = len(times)
    unique = sorted(set(times))
    report.samples_repeated = len(times) - len(unique)
    steps = [(b - a).total_seconds() for a, b in itertools.pairwise(unique)]
    if not steps:
        report.max_gap_s = rules.max_gap_s
        return
    report.period_s = statistics.median(steps)
    report.max_gap_s = rules.max_gap_s if rules.max_gap_s is not None else rules.gap_factor * report.period_s
    for a, b in itertools.pairwise(unique):
        if (b - a).total_seconds() > report.max_gap_s:
            gap = Gap(a, b)
            report.gaps.append(gap)
            report.violations.append(
                Violation(
                    "sample_gap",
                    f"no sample for {gap.seconds:.3g} s between {_iso(a)} and {_iso(b)} "
                    f"(limit {report.max_gap_s:.3g} s)",
                )
            )


def _silence(report: Report, telemetry: list[_Judged], rules: Rules) -> None:
    received = [j.seen.received_at for j in telemetry]
    if not received:
        return
    limit = report.max_gap_s
    if len(received) > 1:
        spacing = statistics.median((b - a).total_seconds() for a, b in itertools.pairwise(received))
        limit = max(limit or 0.0, rules.gap_factor * spacing)
    if limit is None:
        return
    for what, quiet in (
        ("at the start of the watch", received[0] - report.started_at),
        ("at the end of the watch", report.ended_at - received[-1]),
    ):
        if quiet.total_seconds() > limit:
            report.violations.append(
                Violation(
                    "silence", f"no telemetry for {quiet.total_seconds():.3g} s {what} (limit {limit:.3g} s)"
                )
            )


def _seq(report: Report, telemetry: list[_Judged]) -> None:
    runs: list[set[int]] = []
    top = -1
    for j in telemetry:
        if any(not (d.path or "").startswith("$.samples[") for d in j.verdict.dead):
            continue  # the envelope itself is broken: its seq is not the device's word
        seq = j.verdict.seq if j.verdict.seq is not None else _seq_of(j.seen.payload)
        if seq is None:
            continue
        if report.seq_first is None:
            report.seq_first = seq
        report.seq_last = seq
        if not runs or (seq == 0 and top > 0):  # the first message, or the device restarted its counter
            report.seq_restarts += bool(runs)
            runs.append(set())
            top = -1
        if seq in runs[-1]:
            report.seq_repeated += 1  # a resend: at-least-once delivery allows it
            continue
        if seq < top:
            report.seq_late += 1
        runs[-1].add(seq)
        top = max(top, seq)
    for run in runs:
        ordered = sorted(run)
        for a, b in itertools.pairwise(ordered):
            if b - a > 1:
                report.seq_missing += b - a - 1
                report.violations.append(
                    Violation(
                        "seq_gap",
                        f"seq {a + 1}"
                        + (f" .. {b - 1}" if b - a > 2 else "")
                        + f" never arrived ({b - a - 1} "
                        "message(s) lost)",
                    )
                )


def _skew(report: Report, telemetry: list[_Judged], rules: Rules) -> None:
    lags = [
        (j.seen.received_at - max(row["t"] for row in j.verdict.rows)).total_seconds()
        for j in telemetry
        if j.verdict.rows
    ]
    if not lags:
        return
    report.skew_median_s = statistics.median(lags)
    report.skew_min_s, report.skew_max_s = min(lags), max(lags)
    if abs(report.skew_median_s) > rules.max_skew_s:
        side = "behind" if report.skew_median_s > 0 else "ahead of"
        report.violations.append(
            Violation(
                "clock_skew",
                f"the device's newest sample is {abs(report.skew_median_s):.3g} s {side} the receive time "
                f"(median over {len(lags)} messages; limit {rules.max_skew_s:g} s): is its clock "
                "synchronised?",
            )
        )


def _retained(report: Report, mine: list[_Judged]) -> None:
    for kind, name in ((TopicKind.META, "meta"), (TopicKind.STATE, "state")):
        good = [
            j
            for j in mine
            if j.verdict.parsed and j.verdict.parsed.kind is kind and j.verdict.record is not None
        ]
        if not good:
            report.violations.append(
                Violation(f"no_{name}", f"no valid {name} on {PREFIX}/<site>/dev/{report.device}/{name}")
            )
            continue
        retained = any(j.seen.retained for j in good)
        record = good[-1].verdict.record
        if isinstance(record, DeviceMeta):
            report.meta, report.meta_retained = record, retained
        elif isinstance(record, DeviceState):
            report.state, report.state_retained = record, retained
        if not retained:
            report.violations.append(
                Violation(f"{name}_not_retained", f"the {name} is published without the retain flag")
            )


def _liveness(report: Report, mine: list[_Judged], statuses: list[_Judged], telemetry: list[_Judged]) -> None:
    latest: dict[str, tuple[GatewayStatus, bool]] = {}
    for j in statuses:
        if isinstance(j.verdict.record, GatewayStatus):
            latest[j.verdict.record.gateway] = (j.verdict.record, j.seen.retained)
        elif j.verdict.outcome == "ignored" and j.verdict.parsed is not None:  # a cleared status
            latest.pop(j.verdict.parsed.source, None)
    report.gateways = sorted(
        gw
        for gw, (status, retained) in latest.items()
        if status.online and retained and report.device in status.devices
    )
    states = [
        j
        for j in mine
        if j.verdict.parsed and j.verdict.parsed.kind is TopicKind.STATE and j.verdict.record is not None
    ]
    last_state = states[-1] if states else None
    if last_state is not None and isinstance(last_state.verdict.record, DeviceState):
        if not last_state.verdict.record.online:
            after = [j for j in telemetry if j.seen.received_at > last_state.seen.received_at]
            if after:
                report.violations.append(
                    Violation(
                        "state_offline",
                        f"the state says offline but {len(after)} telemetry message(s) came after it",
                        last_state.seen.topic,
                        last_state.seen.received_at,
                    )
                )
                return
        if last_state.verdict.record.online and report.state_retained:
            return
    if report.gateways:
        return
    report.violations.append(
        Violation(
            "last_will",
            "nothing announces the device online for a last will to take back: no retained state with "
            "online: true, and no retained online gateway status listing it",
        )
    )


# --- the MQTT adapter ---------------------------------------------------------------------------------


def _utc_now() -> datetime:
    return datetime.now(UTC)


def filters(device: str, site: str | None) -> list[str]:
    """What to subscribe to: the device's topics and the gateway statuses of its site(s)."""
    where = site or "+"
    return [f"{PREFIX}/{where}/dev/{device}/+", f"{PREFIX}/{where}/gw/+/status"]


async def watch(
    target: MqttTarget,
    device: str,
    site: str | None,
    seconds: float,
    *,
    clock: Callable[[], datetime] = _utc_now,
    on_ready: Callable[[], None] | None = None,
    ca_file: str | None = None,
) -> tuple[list[Observed], datetime, datetime]:
    """Subscribe (MQTT 5, QoS 1, retain-as-published) to the device's topics and its site's gateway
    statuses, and collect what arrives for ``seconds``. Returns the messages and the watch window (from
    ``clock``, which also stamps each message on receipt). ``on_ready`` is called once subscribed."""
    options = SubscribeOptions(qos=1, retainAsPublished=True)
    observed: list[Observed] = []
    async with aiomqtt.Client(
        target.host,
        target.port,
        username=target.username,
        password=target.password,
        identifier=f"vitalab-conform-{uuid.uuid4().hex[:12]}",
        protocol=aiomqtt.ProtocolVersion.V5,
        tls_context=target.ssl_context(Path(ca_file) if ca_file else None),
    ) as client:
        for flt in filters(device, site):
            await client.subscribe(flt, options=options)
        started = clock()
        if on_ready is not None:
            on_ready()
        loop = asyncio.get_running_loop()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout_at(loop.time() + seconds):
                async for message in client.messages:
                    payload = message.payload
                    data = (
                        bytes(payload)
                        if isinstance(payload, bytes | bytearray)
                        else str(payload or "").encode()
                    )
                    observed.append(
                        Observed(clock(), str(message.topic), data, bool(message.retain), message.qos)
                    )
        ended = clock()
    return observed, started, ended
