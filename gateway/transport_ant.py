"""ANT+ transport (optional extra ``ant``: ``openant``): one receive channel per configured device on the
ANT+ network (FE-C: device type 17, period 8192; HRM: type 120, period 8070; RF channel 57), the node
running on its own thread; every broadcast's 8-byte payload becomes a frame whose source comes from the
device type and the page in byte 0.

openant's API as used (openant 1.3): ``Node()``, ``node.set_network_key(0, ANTPLUS_NETWORK_KEY)``,
``node.new_channel(Channel.Type.BIDIRECTIONAL_RECEIVE)``, ``channel.on_broadcast_data = callback(data)``,
``channel.set_id(device_number, device_type, transmission_type)``, ``set_period``, ``set_search_timeout``,
``set_rf_freq``, ``open()``, then ``node.start()`` (blocks) and ``node.stop()``. Without the extra,
:class:`gateway.errors.TransportUnavailable`.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from typing import Any, Final

from gateway.errors import TransportUnavailable
from gateway.transport import ANT_FE, ANT_HRM, DeviceInfo, Event, Frame, ant_source

logger = logging.getLogger(__name__)

RF_CHANNEL: Final = 57
PERIOD: Final = {ANT_FE: 8192, ANT_HRM: 8070}
SEARCH_TIMEOUT: Final = 255  # never stop searching


def load_openant() -> tuple[Any, Any, Any]:
    """(Node, Channel, ANTPLUS_NETWORK_KEY)."""
    try:
        from openant.devices import ANTPLUS_NETWORK_KEY
        from openant.easy.channel import Channel
        from openant.easy.node import Node
    except ImportError as exc:
        raise TransportUnavailable("ANT+", "ant", str(exc)) from exc
    return Node, Channel, ANTPLUS_NETWORK_KEY


def device_type(info: DeviceInfo) -> int:
    return ANT_HRM if info.kind == "hr_strap" else ANT_FE


def broadcast(device_id: str, dtype: int, data: Sequence[int] | bytes) -> Frame:
    """A broadcast payload as a frame, stamped now."""
    payload = bytes(data)
    t = datetime.now(UTC)
    page = payload[0] if payload else 0
    return Frame(
        device_id, ant_source(dtype, page), payload, t.replace(microsecond=t.microsecond // 1000 * 1000)
    )


class AntTransport:
    name = "ant"
    live = True

    def __init__(self, devices: Sequence[DeviceInfo]) -> None:
        self._node_cls, self._channel_cls, self._key = load_openant()
        self.devices = [d for d in devices if d.transport == "ant"]
        for d in self.devices:
            if d.kind == "power_meter":
                raise ValueError(f"ANT+ power meters are not supported ({d.device_id}); use BLE")

    async def events(self) -> AsyncIterator[Sequence[Event]]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Event] = asyncio.Queue()
        node = self._node_cls()
        node.set_network_key(0x00, self._key)
        for info in self.devices:
            dtype = device_type(info)
            channel = node.new_channel(self._channel_cls.Type.BIDIRECTIONAL_RECEIVE)
            callback = functools.partial(self._received, loop, queue, info.device_id, dtype)
            channel.on_broadcast_data = callback
            channel.on_burst_data = callback
            channel.set_period(PERIOD[dtype])
            channel.set_search_timeout(SEARCH_TIMEOUT)
            channel.set_rf_freq(RF_CHANNEL)
            channel.set_id(int(info.address or "0", 0), dtype, 0)
            channel.open()
        thread = threading.Thread(target=node.start, name="ant-node", daemon=True)
        thread.start()
        try:
            yield list(self.devices)
            while True:
                batch = [await queue.get()]
                while not queue.empty():
                    batch.append(queue.get_nowait())
                yield batch
        finally:
            node.stop()
            await asyncio.to_thread(thread.join, 5)

    @staticmethod
    def _received(
        loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[Event], device_id: str, dtype: int, data: Any
    ) -> None:
        loop.call_soon_threadsafe(queue.put_nowait, broadcast(device_id, dtype, data))
