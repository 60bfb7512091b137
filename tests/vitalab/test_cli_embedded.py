"""The in-process broker's late-acknowledgement noise is counted and said once a minute, not per message."""

from __future__ import annotations

import logging

import pytest

from vitalab.embedded import LateAcks


def test_late_acks_are_counted_and_summarised(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    late = LateAcks(every_s=60.0, clock=lambda: now[0])
    handler_log = logging.getLogger("amqtt.mqtt.protocol.handler")
    broker_log = logging.getLogger("amqtt.broker")
    other = "Task failed and will be skipped: <Task exception=OSError('connection reset')>"
    caplog.set_level(logging.INFO)
    for name in LateAcks.LOGGERS:
        logging.getLogger(name).addFilter(late)
    try:
        for i, t in enumerate((0.0, 1.0, 2.0, 61.0, 62.0)):
            now[0] = t
            handler_log.warning("Timeout waiting for PUBACK for packet ID %d", i)
            handler_log.warning("PUBACK waiter with Id '%d' already done", i)
            if i < 3:  # the ingester's acknowledgement comes after all
                handler_log.warning("Received PUBACK for unknown pending message Id: '%d'", i)
            broker_log.error(
                "Task failed and will be skipped: <Task exception=TimeoutError('Timeout waiting "
                "for PUBACK for packet ID %d')>",
                i,
            )
        broker_log.error(other)  # anything else passes
    finally:
        for name in LateAcks.LOGGERS:
            logging.getLogger(name).removeFilter(late)
    late.say()  # at shutdown
    said = [(r.name, r.getMessage()) for r in caplog.records]
    summaries = [m for n, m in said if n == "vitalab.embedded"]
    assert [m.split(" deliveries")[0] for m in summaries] == [
        "in-process broker: 1",  # the first at once
        "in-process broker: 3",  # the next a minute later
        "in-process broker: 1",  # the rest at shutdown
    ]
    assert summaries[-1].endswith(
        "(5 in all, 3 acknowledged later); amqtt will not resend them if the ingester stops before "
        "committing them"
    )
    assert ("amqtt.broker", other) in said
    assert not any("PUBACK" in m for n, m in said if n.startswith("amqtt"))
    assert (late.late, late.acked_later) == (5, 3)
