"""The MQTT source's hand-over to the event loop (white-box: no broker needed for these)."""

from __future__ import annotations

import asyncio

import pytest

from ingest.mqtt import MqttSource
from ingest.source import Inbound
from vitalab.settings import MqttTarget

pytestmark = pytest.mark.asyncio


def _source() -> MqttSource:
    return MqttSource(MqttTarget(host="127.0.0.1", port=1), client_id="unit", filters=[])


async def test_a_cancellation_that_meets_an_arriving_message_is_not_swallowed() -> None:
    """A stop (cancellation) arriving in the same loop iteration as a message must stop the waiter, and the
    message must stay in the buffer for whoever takes it next. (``asyncio.wait_for`` on Python 3.11 returns
    the message and drops the cancellation: the ingester would not stop.)"""
    source = _source()
    waiter = asyncio.create_task(source.get_within(60))
    while not source._waiting:  # noqa: ASYNC110  (until the waiter is parked on its event)
        await asyncio.sleep(0)
    msg = Inbound("t", b"p", 1, False, 1, 1, 0.0)
    source._buf.append(msg)  # what paho's thread does, then it wakes the loop
    source._ready.set()
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert source.get_nowait() is msg


async def test_get_within_returns_none_after_its_timeout_and_a_message_before() -> None:
    source = _source()
    assert await source.get_within(0.01) is None
    msg = Inbound("t", b"p", 1, False, 1, 1, 0.0)
    source._buf.append(msg)
    assert await source.get_within(0.01) is msg
