"""`vitalab gateway`: the configured transports into one gateway service, until SIGINT/SIGTERM.

Settings (``vitalab.settings``): ``VITALAB_GATEWAY_ID``, ``VITALAB_GATEWAY_TRANSPORTS`` (``mqtt`` raw
topics, ``ble``, ``ant``), ``VITALAB_GATEWAY_DEVICES_FILE`` (TOML, see
``gateway.transport.load_device_list``), ``VITALAB_GATEWAY_BUFFER_PATH`` / ``…_MAX_ENTRIES`` /
``…_MAX_BYTES`` (the store-and-forward file and its bounds; when full the oldest telemetry goes first, see
``gateway.buffer``), ``VITALAB_GATEWAY_BATCH_SAMPLES``, and the broker (``VITALAB_MQTT_URL``,
``VITALAB_MQTT_PROTOCOL``, ``VITALAB_MQTT_CA_FILE``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Sequence
from pathlib import Path

from gateway.publisher import GatewayPublisher
from gateway.service import GatewayService, ServiceStats
from gateway.transport import DeviceInfo, Transport, load_device_list
from vitalab.errors import ConfigError
from vitalab.settings import MqttTarget, Settings

logger = logging.getLogger(__name__)


def build_transports(
    names: Sequence[str], settings: Settings, target: MqttTarget, devices: Sequence[DeviceInfo]
) -> list[Transport]:
    """The named transports; a radio whose extra is missing raises ``TransportUnavailable``."""
    out: list[Transport] = []
    for name in names:
        if name == "mqtt":
            from gateway.transport_mqtt import MqttRawTransport

            client_id = f"vitalab-gw-{settings.site}-{settings.gateway_id}-raw"
            out.append(
                MqttRawTransport(target, settings.site, client_id=client_id, protocol=settings.mqtt_protocol)
            )
        elif name == "ble":
            from gateway.transport_ble import BleTransport

            out.append(BleTransport(devices))
        elif name == "ant":
            from gateway.transport_ant import AntTransport

            out.append(AntTransport(devices))
        else:
            raise ConfigError("gateway_transports", f"unknown transport {name!r} (mqtt, ble, ant)")
    return out


async def run_gateway(
    settings: Settings,
    *,
    transports: Sequence[str] | None = None,
    devices_file: Path | None = None,
) -> ServiceStats:
    target = settings.mqtt_target()
    if target is None:
        raise ConfigError("mqtt_url", "VITALAB_MQTT_URL is not set (the gateway publishes to a broker)")
    path = devices_file or settings.gateway_devices_file
    devices = load_device_list(path) if path is not None else []
    names = list(transports) if transports else settings.gateway_transports.split(",")
    built = build_transports(names, settings, target, devices)
    async with GatewayPublisher(
        target,
        settings.site,
        settings.gateway_id,
        settings.gateway_buffer(),
        max_buffer_entries=settings.gateway_buffer_max_entries,
        max_buffer_bytes=settings.gateway_buffer_max_bytes,
        batch_samples=settings.gateway_batch_samples,
        ca_file=settings.mqtt_ca_file,
        protocol=settings.mqtt_protocol,
        commit_acks=settings.gateway_commit_acks,
        ack_timeout_s=settings.gateway_ack_timeout_s,
    ) as publisher:
        service = GatewayService(publisher, built, devices=devices)
        task = asyncio.create_task(service.run())
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
        logger.info(
            "gateway %s: transports %s, %d configured devices", settings.gateway_id, names, len(devices)
        )
        with contextlib.suppress(asyncio.CancelledError):
            await task
    logger.info("gateway stopped: %s", service.stats)
    return service.stats
