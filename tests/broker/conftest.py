"""Brokers under test, both enforcing one account store: a real Mosquitto started on a free port with a
config pointing at the store's ``passwd``/``acl`` (reloaded by SIGHUP), and the embedded amqtt broker of
``vitalab up`` with the account plugins (in a thread of its own, so the tests drive both alike)."""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import subprocess
import threading
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import MQTTProtocolVersion

from tests.broker.clients import Connector
from tests.conftest import free_port, missing, wait_for_port
from vitalab.broker import IssuedCredential, MosquittoAuth, NoReload, Role, SignalReload
from vitalab.broker.amqtt_auth import LiveAccounts, broker_config

T = TypeVar("T")


def mosquitto_binary() -> str:
    found = shutil.which("mosquitto") or (
        "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None
    )
    if found is None:
        missing("mosquitto is not installed (apt-get install mosquitto)")
    assert found is not None
    return found


def mosquitto_conf(auth: MosquittoAuth, port: int) -> str:
    """What deploy/mosquitto/mosquitto.conf says about access, on a loopback port, without persistence."""
    return "\n".join(
        [
            f"listener {port} 127.0.0.1",
            "allow_anonymous false",
            f"password_file {auth.passwd_path}",
            f"acl_file {auth.acl_path}",
            "persistence false",
            # as root, mosquitto would switch to the `mosquitto` user, which cannot read the 0600 files
            f"user {pwd.getpwuid(os.geteuid()).pw_name}",
            "log_dest stdout",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
            "",
        ]
    )


class AmqttThread:
    """amqtt's ``Broker`` on its own event loop in a thread, configured by :func:`broker_config`."""

    def __init__(self, live: LiveAccounts, port: int) -> None:
        self.live = live
        self.port = port
        self.loop = asyncio.new_event_loop()
        self.broker: Any = None
        self.stop_disconnecting: Callable[[], None] = lambda: None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="amqtt", daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self._start())
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread by start()
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        self.loop.run_forever()
        self.loop.close()

    async def _start(self) -> None:
        from amqtt.broker import Broker

        self.broker = Broker(broker_config(self.live, "127.0.0.1", self.port))
        await self.broker.start()
        self.stop_disconnecting = self.live.disconnect_revoked_on(self.broker, asyncio.get_running_loop())

    def start(self) -> None:
        self._thread.start()
        assert self._ready.wait(10), "amqtt did not start"
        if self._error is not None:
            raise self._error

    def call(self, make: Callable[[], Coroutine[Any, Any, T]]) -> T:
        return asyncio.run_coroutine_threadsafe(make(), self.loop).result(10)

    def stop(self) -> None:
        self.stop_disconnecting()
        if self.broker is not None:
            self.call(self.broker.shutdown)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


@dataclass
class BrokerUnderTest:
    kind: Literal["mosquitto", "amqtt"]
    port: int
    auth: MosquittoAuth
    protocol: MQTTProtocolVersion
    log: Path | None = None
    amqtt: AmqttThread | None = None
    passwords: dict[str, str] = field(default_factory=dict)
    host: str = "127.0.0.1"

    def keep(self, credential: IssuedCredential) -> IssuedCredential:
        self.passwords[credential.username] = credential.password
        return credential

    def log_tail(self) -> str:
        if self.log is None:
            return ""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-30:])


def _start_mosquitto(tmp: Path, auth: MosquittoAuth) -> tuple[subprocess.Popen[bytes], int, Path]:
    binary = mosquitto_binary()
    log = tmp / "mosquitto.log"
    for _attempt in range(3):  # another process may take the free port first
        port = free_port()
        conf = tmp / "mosquitto.conf"
        conf.write_text(mosquitto_conf(auth, port))
        with log.open("ab") as out:
            proc = subprocess.Popen([binary, "-c", str(conf)], stdout=out, stderr=subprocess.STDOUT)
        try:
            wait_for_port(port, 5)
            return proc, port, log
        except TimeoutError:
            proc.terminate()
            proc.wait()
    pytest.fail(f"mosquitto did not start:\n{log.read_text()}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(params=["mosquitto", "amqtt"])
def broker(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BrokerUnderTest]:
    """An empty account store and a broker enforcing it; add accounts with ``broker.auth`` and keep
    their passwords with ``broker.keep``."""
    auth = MosquittoAuth(tmp_path / "auth", NoReload())
    auth.apply()  # mosquitto needs the (empty) files to start
    if request.param == "mosquitto":
        proc, port, log = _start_mosquitto(tmp_path, auth)
        auth.reloader = SignalReload(proc.pid)
        try:
            yield BrokerUnderTest("mosquitto", port, auth, mqtt.MQTTv5, log=log)
        finally:
            _stop(proc)
    else:
        live = LiveAccounts(auth.accounts())
        auth.reloader = live
        server = AmqttThread(live, free_port())
        server.start()
        try:
            yield BrokerUnderTest("amqtt", server.port, auth, mqtt.MQTTv311, amqtt=server)
        finally:
            server.stop()


@pytest.fixture
def connect(broker: BrokerUnderTest) -> Iterator[Connector]:
    connector = Connector(broker.host, broker.port, broker.protocol)
    try:
        yield connector
    finally:
        connector.close()


__all__ = ["AmqttThread", "BrokerUnderTest", "Role", "mosquitto_conf"]
