"""What the ingester needs from a message bus: one seam, two engines (MQTT and NATS JetStream).

A source hands over :class:`Inbound` messages and takes them back as acknowledged once their rows are
committed; until then the bus keeps them and delivers them again (to this ingester or another one). It also
publishes the contract's commit acknowledgements for devices and gateways.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Inbound:
    topic: str
    """The MQTT topic, on every bus (a NATS subject is mapped back to it by its source)."""
    payload: bytes
    qos: int
    retain: bool
    mid: int
    """The bus's handle for acknowledging this message on its connection."""
    generation: int
    """Connection the message came on; an ack is only meaningful on the same connection."""
    received_at: float
    """time.time() when the bus handed it over."""
    dup: bool = False
    """The bus sends this message again because it did not get our acknowledgement."""


class Source(Protocol):
    """One subscriber connection to a bus (used as an async context manager by whoever opens it)."""

    @property
    def connected(self) -> bool: ...

    @property
    def backlog(self) -> int:
        """Messages received and not yet taken by the caller."""
        ...

    async def wait_subscribed(self, timeout_s: float = 10.0) -> None: ...

    def stop_intake(self) -> None:
        """Take no more messages; what is buffered already stays to be taken."""
        ...

    async def get(self) -> Inbound: ...

    async def get_within(self, timeout_s: float) -> Inbound | None: ...

    def get_nowait(self) -> Inbound | None: ...

    def ack(self, msg: Inbound) -> bool:
        """Acknowledge a message whose effects are committed; False if it can no longer be acked."""
        ...

    async def publish(self, messages: Sequence[tuple[str, bytes]]) -> None:
        """Publish ``(topic, payload)`` messages (QoS 1, not retained) and wait until the bus has them;
        raises :class:`~ingest.errors.PublishFailed` when it cannot say so."""
        ...

    @property
    def inflight_bytes(self) -> int:
        """Payload bytes received and not yet acknowledged; intake pauses while they are at the source's
        byte bound (a message larger than the bound is still taken, alone)."""
        ...

    async def drain(self, timeout_s: float = 5.0) -> bool:
        """Leaving for good: the first call asks the bus to route nothing new to this subscriber. True once
        everything the bus had delivered or queued for it has been taken and the caller has acked it all;
        False while messages are still to be taken (take, commit, ack them, then call again) or if the bus
        did not answer within ``timeout_s``."""
        ...

    async def end_session(self) -> bool:
        """Disconnect and delete this subscriber's session on the bus (after a :meth:`drain` that returned
        True). Refused (False) while anything received is unacknowledged: the session, and those messages,
        are kept for this subscriber's return."""
        ...
