"""BLE transport (optional extra ``ble``: ``bleak``): connects to the configured devices, reads their Device
Information Service, subscribes to the notifications of their kind's characteristics and yields all of it
as frames; reconnects after a disconnect.

On every connect, before subscribing, the strings of the Device Information Service (0x180A; manufacturer,
model number, firmware / hardware / software revision: :data:`gateway.dis.FIELDS`) that the device has are
read and handed over as frames (``ble:2a29`` ...): the service chooses the device's quirks from them before
its first notification arrives, without anyone naming the model. A string that cannot be read is logged
and skipped.

Only what needs no radio is tested here (the characteristic table, the notification-to-frame mapping, the
DIS reads against a stand-in client, and that a missing ``bleak`` gives
:class:`gateway.errors.TransportUnavailable`); bleak's API as used:
``BleakClient(address, disconnected_callback=..., timeout=...)`` as an async context manager,
``client.services.get_characteristic(uuid)``, ``await client.read_gatt_char(uuid)`` (a ``bytearray``),
``await client.start_notify(uuid, callback(char, data))``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime
from typing import Any, Final

from gateway import dis
from gateway.errors import TransportUnavailable
from gateway.transport import DeviceInfo, Event, Frame, Link
from vitalab.wire import DeviceKind, registry

logger = logging.getLogger(__name__)

CHARACTERISTICS: Final[dict[DeviceKind, tuple[str, ...]]] = {k.name: k.ble for k in registry.KINDS if k.ble}
"""Per kind, from the registry: data first, then (machines) Fitness Machine Status and Training Status."""


def uuid16(char: str) -> str:
    """The 128-bit UUID of a 16-bit SIG characteristic (``"2ad2"`` -> ``0000 2ad2 -0000-1000-8000-...``)."""
    return f"0000{char}-0000-1000-8000-00805f9b34fb"


def load_bleak() -> Any:
    try:
        import bleak
    except ImportError as exc:
        raise TransportUnavailable("BLE", "ble", str(exc)) from exc
    return bleak


def now_ms() -> datetime:
    t = datetime.now(UTC)
    return t.replace(microsecond=t.microsecond // 1000 * 1000)


def notification(device_id: str, char: str, data: bytes | bytearray) -> Frame:
    """A notification as a frame, stamped now (BLE notifications carry no time)."""
    return Frame(device_id, f"ble:{char}", bytes(data), now_ms())


async def read_device_information(
    client: Any, device_id: str, errors: tuple[type[BaseException], ...]
) -> list[Frame]:
    """The Device Information Service strings the connected ``client`` has, as frames (in
    :data:`gateway.dis.FIELDS` order); a read that raises one of ``errors`` is logged and skipped."""
    out: list[Frame] = []
    for char in dis.FIELDS:
        if client.services.get_characteristic(uuid16(char)) is None:
            continue
        try:
            data = await client.read_gatt_char(uuid16(char))
        except errors as exc:
            logger.warning("BLE %s: could not read device information %s: %s", device_id, char, exc)
            continue
        out.append(notification(device_id, char, data))
    return out


class BleTransport:
    name = "ble"
    live = True

    def __init__(
        self, devices: Sequence[DeviceInfo], *, reconnect_s: float = 5.0, connect_timeout_s: float = 20.0
    ) -> None:
        self._bleak = load_bleak()
        self.devices = [d for d in devices if d.transport == "ble"]
        for d in self.devices:
            if not d.address:
                raise ValueError(f"BLE device {d.device_id} has no address")
        self._reconnect_s = reconnect_s
        self._timeout_s = connect_timeout_s

    async def events(self) -> AsyncIterator[Sequence[Event]]:
        queue: asyncio.Queue[Event] = asyncio.Queue()
        tasks = [asyncio.create_task(self._device(d, queue)) for d in self.devices]
        try:
            yield list(self.devices)
            while True:
                batch = [await queue.get()]
                while not queue.empty():
                    batch.append(queue.get_nowait())
                yield batch
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _device(self, info: DeviceInfo, queue: asyncio.Queue[Event]) -> None:
        bleak = self._bleak
        while True:
            gone = asyncio.Event()
            connected = False
            try:
                async with bleak.BleakClient(
                    info.address, disconnected_callback=_setter(gone), timeout=self._timeout_s
                ) as client:
                    connected = True
                    queue.put_nowait(Link(info.device_id, True, now_ms()))
                    errors = (bleak.exc.BleakError, TimeoutError, OSError)
                    for frame in await read_device_information(client, info.device_id, errors):
                        queue.put_nowait(frame)
                    for char in CHARACTERISTICS[info.kind]:
                        if client.services.get_characteristic(uuid16(char)) is None:
                            continue
                        callback = functools.partial(self._notified, queue, info.device_id, char)
                        await client.start_notify(uuid16(char), callback)
                    await gone.wait()
            except (bleak.exc.BleakError, TimeoutError, OSError) as exc:
                logger.warning("BLE %s (%s): %s", info.device_id, info.address, exc)
            if connected:
                queue.put_nowait(Link(info.device_id, False, now_ms()))
            await asyncio.sleep(self._reconnect_s)

    @staticmethod
    def _notified(
        queue: asyncio.Queue[Event], device_id: str, char: str, _sender: object, data: bytearray
    ) -> None:
        queue.put_nowait(notification(device_id, char, data))


def _setter(event: asyncio.Event) -> Callable[[object], None]:
    return lambda _client: event.set()
