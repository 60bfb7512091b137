"""Apply the versioned SQL migrations in ``vitalab/db/migrations``.

Files are ``NNNN_name.sql`` (portable PostgreSQL, always applied) and ``NNNN_name.timescale.sql``
(applied after the portable file of the same version when TimescaleDB is available). Every applied file is
recorded in ``schema_migrations`` with its checksum; running again applies only what is missing, and an
applied file whose text changed is an error rather than a silent divergence. Concurrent runners (several
ingesters starting at once) serialise on an advisory lock.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass, field
from importlib import resources
from typing import Literal

import psycopg
from psycopg import sql

from vitalab.errors import MigrationError

logger = logging.getLogger(__name__)

TimescaleMode = Literal["auto", "require", "off"]
Flavor = Literal["base", "timescale"]
_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)(\.timescale)?\.sql$")
_LOCK_KEY = 0x7669_7461  # "vita"


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    flavor: Flavor
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()

    @property
    def label(self) -> str:
        return f"{self.version:04d}_{self.name}" + (".timescale" if self.flavor == "timescale" else "")


@dataclass(frozen=True, slots=True)
class MigrationReport:
    applied: list[str] = field(default_factory=list)
    timescale: bool = False
    timescale_version: str | None = None


def discover() -> list[Migration]:
    found: list[Migration] = []
    for entry in resources.files("vitalab.db").joinpath("migrations").iterdir():
        m = _FILE.match(entry.name)
        if m is None:
            continue
        flavor: Flavor = "timescale" if m.group(3) else "base"
        found.append(Migration(int(m.group(1)), m.group(2), flavor, entry.read_text(encoding="utf-8")))
    found.sort(key=lambda mig: (mig.version, mig.flavor == "timescale"))
    return found


def _enable_timescale(conn: psycopg.Connection, mode: TimescaleMode) -> str | None:
    """Return the TimescaleDB version in use, or None to stay on plain PostgreSQL."""
    if mode == "off":
        return None
    row = conn.execute(
        "SELECT default_version FROM pg_available_extensions WHERE name = 'timescaledb'"
    ).fetchone()
    if row is None:
        if mode == "require":
            raise MigrationError(0, "timescaledb", "the timescaledb extension is not installed on the server")
        return None
    preload = conn.execute("SELECT current_setting('shared_preload_libraries')").fetchone()
    if preload is None or "timescaledb" not in str(preload[0]):
        # CREATE EXTENSION would fail and drop the connection: TimescaleDB must be preloaded
        if mode == "require":
            raise MigrationError(
                0, "timescaledb", "timescaledb is installed but not in shared_preload_libraries"
            )
        logger.info("timescaledb is installed but not preloaded; using plain PostgreSQL")
        return None
    try:
        with conn.transaction():
            conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
    except psycopg.Error as exc:
        if mode == "require":
            raise MigrationError(0, "timescaledb", f"CREATE EXTENSION failed: {exc}") from exc
        logger.warning("timescaledb cannot be enabled (%s); using plain PostgreSQL", exc)
        return None
    ver = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'").fetchone()
    return str(ver[0]) if ver else None


def _log_notice(diag: psycopg.errors.Diagnostic) -> None:
    level = logging.WARNING if diag.severity_nonlocalized == "WARNING" else logging.INFO
    logger.log(level, "migration: %s", diag.message_primary)


def migrate(conninfo: str, *, timescale: TimescaleMode = "auto") -> MigrationReport:
    """Bring the database at ``conninfo`` to the newest schema. Idempotent."""
    applied: list[str] = []
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.add_notice_handler(_log_notice)  # what a migration says (RAISE NOTICE/WARNING) reaches the log
        conn.execute("SELECT pg_advisory_lock(%s)", (_LOCK_KEY,))
        try:
            conn.execute(
                """CREATE TABLE IF NOT EXISTS schema_migrations (
                       version    integer NOT NULL,
                       flavor     text NOT NULL,
                       name       text NOT NULL,
                       checksum   text NOT NULL,
                       applied_at timestamptz NOT NULL DEFAULT now(),
                       PRIMARY KEY (version, flavor))"""
            )
            ts_version = _enable_timescale(conn, timescale)
            done = {
                (int(v), str(f)): str(c)
                for v, f, c in conn.execute("SELECT version, flavor, checksum FROM schema_migrations")
            }
            for mig in discover():
                if mig.flavor == "timescale" and ts_version is None:
                    continue
                known = done.get((mig.version, mig.flavor))
                if known is not None:
                    if known != mig.checksum:
                        raise MigrationError(mig.version, mig.name, "applied file was changed afterwards")
                    continue
                try:
                    with conn.transaction():
                        conn.execute(sql.SQL(mig.sql))  # our own files, never input
                        conn.execute(
                            "INSERT INTO schema_migrations (version, flavor, name, checksum) "
                            "VALUES (%s, %s, %s, %s)",
                            (mig.version, mig.flavor, mig.name, mig.checksum),
                        )
                except psycopg.Error as exc:
                    raise MigrationError(mig.version, mig.name, str(exc)) from exc
                logger.info("applied migration %s", mig.label)
                applied.append(mig.label)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_KEY,))
    return MigrationReport(applied=applied, timescale=ts_version is not None, timescale_version=ts_version)
