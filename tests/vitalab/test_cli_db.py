"""Reaching the database with psql: `vitalab db url` and `vitalab db shell`, on the embedded server (while
another process runs it, and started for the session when nothing does) and on a configured one."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.vitalab.cli_support import one_line_failure, private_dir, vitalab
from vitalab.embedded import postgres_server, running_url


@pytest.fixture
def data_dir() -> Iterator[Path]:
    with private_dir() as path:
        yield path


@pytest.fixture
def embedded(data_dir: Path) -> Iterator[str]:
    """The embedded server of ``data_dir``, running as under `vitalab up`, with one row to find."""
    with postgres_server(data_dir) as url:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS cli_probe (answer int)")
            conn.execute("INSERT INTO cli_probe VALUES (42)")
        yield url
    assert running_url(data_dir) is None  # stopped by the fixture, not by the commands


def test_db_url_is_the_running_embedded_servers(data_dir: Path, embedded: str) -> None:
    proc = vitalab("db", "url", data_dir=data_dir)
    assert proc.returncode == 0, proc.stderr
    url = proc.stdout.strip()
    assert url == embedded
    with psycopg.connect(url) as conn:  # a URL others can use
        assert conn.execute("SELECT answer FROM cli_probe").fetchone() == (42,)


def test_db_shell_runs_psql_on_the_running_embedded_server_and_leaves_it_running(
    data_dir: Path, embedded: str
) -> None:
    proc = vitalab("db", "shell", "--", "-tAc", "SELECT answer + 1 FROM cli_probe", data_dir=data_dir)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "43"
    assert running_url(data_dir) == embedded


def test_db_shell_starts_the_embedded_server_for_the_session_and_stops_it(data_dir: Path) -> None:
    proc = vitalab("db", "shell", data_dir=data_dir, stdin="SELECT 6 * 7 AS answer;\n")
    assert proc.returncode == 0, proc.stderr
    assert "42" in proc.stdout.split()
    assert (data_dir / "postgres" / "PG_VERSION").exists()
    assert running_url(data_dir) is None
    # psql's own failure is the command's exit status
    proc = vitalab("db", "shell", "--", "-v", "ON_ERROR_STOP=1", "-c", "SELECT nope", data_dir=data_dir)
    assert proc.returncode != 0
    assert 'column "nope" does not exist' in proc.stderr
    assert running_url(data_dir) is None


def test_db_url_without_a_running_embedded_server_says_how(data_dir: Path) -> None:
    line = one_line_failure(vitalab("db", "url", data_dir=data_dir), "db url", 1)
    assert "is not running" in line
    assert "vitalab db shell" in line


def test_db_url_and_shell_use_the_configured_database(data_dir: Path, database_url: str) -> None:
    proc = vitalab("db", "url", data_dir=data_dir, VITALAB_DATABASE_URL=database_url)
    assert (proc.returncode, proc.stdout.strip()) == (0, database_url)
    proc = vitalab(
        "db",
        "shell",
        "--",
        "-tAc",
        "SELECT count(*) FROM schema_migrations",
        data_dir=data_dir,
        VITALAB_DATABASE_URL=database_url,
    )
    assert proc.returncode == 0, proc.stderr
    assert int(proc.stdout.strip()) >= 1
    assert not (data_dir / "postgres").exists()  # nothing embedded was started
