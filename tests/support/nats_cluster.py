"""A three-node NATS JetStream cluster on loopback ports for the tests and the bus benchmark, each node
Debian's nats-server with the checked-in deploy/nats/nats.conf, its own free ports and a temp store dir.

Start-up is covered as a deployment must be: :meth:`NatsCluster.wait_ready` waits for a JetStream meta leader,
then has an MQTT client connect to every node (each node's MQTT listener sets up its account's streams and
consumers on the first connection), then waits until the listener's streams have a leader and all their
replicas current. Killing a node before that could stall an MQTT publisher on a half-made session stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import nats
import nats.errors
import paho.mqtt.client as paho
from nats.aio.client import Client
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from vitalab.settings import MqttTarget

REPO = Path(__file__).resolve().parents[2]
NATS_CONF = REPO / "deploy" / "nats" / "nats.conf"
T = TypeVar("T")
MQTT_STREAMS = ("$MQTT_sess", "$MQTT_msgs", "$MQTT_rmsgs")


def nats_server_binary() -> str | None:
    return shutil.which("nats-server") or (
        "/usr/sbin/nats-server" if Path("/usr/sbin/nats-server").exists() else None
    )


def _free_port() -> int:
    from tests.conftest import free_port

    return free_port()


@dataclass
class NatsNode:
    name: str
    client_port: int
    cluster_port: int
    mqtt_port: int
    store_dir: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@dataclass
class NatsCluster:
    binary: str
    workdir: Path
    size: int = 3
    # letters and digits, a letter first: nats-server parses an environment variable's value as a config
    # value, and one starting with a digit as a number (which fails the start)
    ingest_password: str = field(default_factory=lambda: "p" + secrets.token_hex(16))
    device_password: str = field(default_factory=lambda: "p" + secrets.token_hex(16))
    nodes: list[NatsNode] = field(default_factory=list)

    def __post_init__(self) -> None:
        for i in range(1, self.size + 1):
            store = self.workdir / f"n{i}"
            store.mkdir(parents=True, exist_ok=True)
            self.nodes.append(NatsNode(f"n{i}", 0, 0, 0, store))
        self._pick_ports()

    def _pick_ports(self) -> None:
        for node in self.nodes:
            node.client_port, node.cluster_port, node.mqtt_port = _free_port(), _free_port(), _free_port()

    # --- addresses -------------------------------------------------------------------------------------
    def url(self, node: NatsNode) -> str:
        return f"nats://ingest:{self.ingest_password}@127.0.0.1:{node.client_port}"

    @property
    def urls(self) -> list[str]:
        """The ingest login's URL of every node (VITALAB_NATS_URLS, comma-joined)."""
        return [self.url(n) for n in self.nodes]

    def mqtt_target(self, node: NatsNode) -> MqttTarget:
        """The MQTT listener of ``node``, logged in as the devices' user."""
        return MqttTarget("127.0.0.1", node.mqtt_port, username="device", password=self.device_password)

    def node(self, name: str) -> NatsNode:
        return next(n for n in self.nodes if n.name == name)

    # --- processes -------------------------------------------------------------------------------------
    def start(self, node: NatsNode) -> None:
        routes = ",".join(f"nats://127.0.0.1:{n.cluster_port}" for n in self.nodes if n is not node)
        env = {
            **os.environ,
            "NATS_MQTT_HOST": "127.0.0.1",
            "NATS_MQTT_PORT": str(node.mqtt_port),
            "NATS_INGEST_PASSWORD": self.ingest_password,
            "NATS_DEVICE_PASSWORD": self.device_password,
        }
        args = [
            self.binary,
            "-c",
            str(NATS_CONF),
            "--name",
            node.name,
            "-a",
            "127.0.0.1",
            "-p",
            str(node.client_port),
            "--cluster_name",
            "vitalab-test",
            "--cluster",
            f"nats://127.0.0.1:{node.cluster_port}",
            "--routes",
            routes,
            "-js",
            "-sd",
            str(node.store_dir),
        ]
        with (self.workdir / f"{node.name}.log").open("ab") as log:
            node.proc = subprocess.Popen(args, stdout=log, stderr=log, env=env)

    def start_all(self, attempts: int = 5) -> None:
        """Start every node; when one cannot bind its ports (a free port taken meanwhile by another
        process), all over again on new ports."""
        for attempt in range(attempts):
            for node in self.nodes:
                self.start(node)
            if all(self._listening(node) for node in self.nodes):
                return
            self.stop_all()
            if attempt + 1 < attempts:
                self._pick_ports()
        tail = self.log(self.nodes[0])[-2000:]
        raise AssertionError(f"the NATS nodes did not start in {attempts} attempts; n1's log ends:\n{tail}")

    def _listening(self, node: NatsNode, timeout_s: float = 30.0) -> bool:
        """Until the node listens on all its ports (True) or has exited (False)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if node.proc is None or node.proc.poll() is not None:
                return False
            if "Listening for route connections" in self.log(node):
                return True
            time.sleep(0.02)
        return False

    def kill(self, node: NatsNode) -> None:
        """kill -9: no lame duck, no goodbye to the other nodes or the clients."""
        if node.proc is not None:
            node.proc.send_signal(signal.SIGKILL)
            node.proc.wait()
            node.proc = None

    def stop_all(self) -> None:
        for node in self.nodes:
            if node.proc is not None:
                node.proc.terminate()
        for node in self.nodes:
            if node.proc is not None:
                try:
                    node.proc.wait(10)
                except subprocess.TimeoutExpired:
                    node.proc.kill()
                    node.proc.wait()
                node.proc = None

    def log(self, node: NatsNode) -> str:
        return (self.workdir / f"{node.name}.log").read_text(errors="replace")

    # --- readiness -------------------------------------------------------------------------------------
    async def connect(self) -> Client:
        nc = Client()
        await nc.connect(
            servers=[self.url(n) for n in self.nodes if n.alive],
            connect_timeout=2,
            reconnect_time_wait=1,
            max_reconnect_attempts=-1,
        )
        return nc

    async def wait_ready(self, timeout_s: float = 60.0) -> None:
        """A JetStream meta leader, every node's MQTT listener set up, and the listener's streams with a
        leader and all replicas current."""
        deadline = time.monotonic() + timeout_s
        nc = await _retry(self.connect, deadline, "a connection to the cluster")
        try:
            js = nc.jetstream()
            await _retry(js.account_info, deadline, "a JetStream meta leader")
            for node in self.nodes:
                await asyncio.to_thread(mqtt_probe, self.mqtt_target(node), deadline)
            for stream in MQTT_STREAMS:
                await self.wait_stream_current(nc, stream, deadline)
        finally:
            await nc.close()

    async def wait_stream_current(self, nc: Client, stream: str, deadline: float) -> str:
        """Until ``stream`` has a leader and every other live node that holds it as a current replica; its
        leader."""
        js = nc.jetstream()
        live = sum(n.alive for n in self.nodes)
        last: object = None
        while time.monotonic() < deadline:
            try:
                info = await js.stream_info(stream)
                cl = info.cluster
                if cl is not None and cl.leader:
                    current = [r for r in cl.replicas or [] if r.current and not r.offline]
                    if len(current) + 1 >= min(live, info.config.num_replicas or 1):
                        return cl.leader
                last = cl
            except (nats.errors.Error, TimeoutError) as exc:
                last = exc
            await asyncio.sleep(0.1)
        raise AssertionError(f"stream {stream} not current on {live} nodes in time (last: {last!r})")

    async def consumer_leader(self, nc: Client, stream: str, consumer: str, deadline: float) -> str:
        js = nc.jetstream()
        last: object = None
        while time.monotonic() < deadline:
            try:
                info = await js.consumer_info(stream, consumer)
                if info.cluster is not None and info.cluster.leader:
                    return str(info.cluster.leader)
                last = info.cluster
            except (nats.errors.Error, TimeoutError) as exc:
                last = exc
            await asyncio.sleep(0.1)
        raise AssertionError(f"consumer {consumer} has no leader in time (last: {last!r})")


async def _retry(call: Callable[[], Awaitable[T]], deadline: float, what: str) -> T:
    last: object = None
    while time.monotonic() < deadline:
        try:
            return await call()
        except (OSError, nats.errors.Error, TimeoutError) as exc:
            last = exc
        await asyncio.sleep(0.1)
    raise AssertionError(f"no {what} in time (last: {last!r})")


def mqtt_probe(target: MqttTarget, deadline: float) -> None:
    """Connect (MQTT 3.1.1, clean session) until a CONNACK accepts us, retrying until the deadline: the first
    connection to a node makes its listener create or look up the account's streams."""
    last: object = None
    while time.monotonic() < deadline:
        last = _connect_once(target, max(0.1, min(10.0, deadline - time.monotonic())))
        if last is None:
            return
        time.sleep(0.1)
    raise AssertionError(f"the MQTT listener at {target.port} did not accept a connection in time ({last!r})")


def _connect_once(target: MqttTarget, timeout_s: float) -> object:
    """None once connected and disconnected again; else what went wrong."""
    done = threading.Event()
    codes: list[ReasonCode] = []
    client = paho.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"probe-{secrets.token_hex(4)}",
        protocol=paho.MQTTv311,
        clean_session=True,
    )
    client.username_pw_set(target.username, target.password)

    def on_connect(c: paho.Client, u: object, f: object, reason: ReasonCode, p: object) -> None:
        codes.append(reason)
        done.set()

    client.on_connect = on_connect
    try:
        client.connect(target.host, target.port, keepalive=10)
    except OSError as exc:
        return exc
    client.loop_start()
    try:
        if not done.wait(timeout_s):
            return "no CONNACK"
        return codes[0] if codes[0].is_failure else None
    finally:
        client.disconnect()
        client.loop_stop()


@contextlib.contextmanager
def nats_cluster(workdir: Path, size: int = 3) -> Iterator[NatsCluster]:
    binary = nats_server_binary()
    if binary is None:
        from tests.conftest import missing

        missing("nats-server is not installed (apt-get install nats-server)")
    assert binary is not None
    cluster = NatsCluster(binary, workdir, size)
    cluster.start_all()
    try:
        yield cluster
    finally:
        cluster.stop_all()
