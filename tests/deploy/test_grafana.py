"""Grafana's provisioned data source and operators' dashboard (deploy/grafana) against the real schema.

Every SQL query of the dashboard (panels and template variables) is expanded the way Grafana's PostgreSQL
data source expands it (its macros, written out below from its documentation and source, in both the
TimescaleDB and the plain PostgreSQL form, and the ``$site`` variable) and run, EXPLAINed and executed,
against a migrated database holding a small site, as the read-only login that deploy/grafana/init.sh makes:
a query that names a column that does not exist, or a table the login may not read, fails here instead of on
an operator's screen.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from psycopg import conninfo

from tests.conftest import missing

REPO = Path(__file__).resolve().parents[2]
GRAFANA = REPO / "deploy" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "operators.json"
FROM = datetime(2026, 11, 16, tzinfo=UTC)
TO = datetime(2026, 11, 23, 12, tzinfo=UTC)
SITE = "gym-a"
MACRO = re.compile(r"\$(\w+)\(([^)]*)\)")  # Grafana's: `$name(args)`, args without a closing parenthesis


def _rfc3339(t: datetime) -> str:
    return t.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _interval_s(text: str) -> float:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)", text.strip().strip("'"))
    assert m, f"interval {text!r}"
    return float(m[1]) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}[m[2]]


def expand(query: str, *, timescaledb: bool, site: str = SITE) -> str:
    """``query`` as Grafana's PostgreSQL data source sends it for the range ``[FROM, TO]`` and ``site``."""
    quoted = "'" + site.replace("'", "''") + "'"
    query = query.replace("${site:sqlstring}", quoted).replace("${site}", site)
    query = re.sub(r"\$site\b", site, query)

    def macro(m: re.Match[str]) -> str:
        name, args = m[1], [a.strip() for a in m[2].split(",")]
        if name == "__time":
            return f'{args[0]} AS "time"'
        if name == "__timeEpoch":
            return f'extract(epoch from {args[0]}) as "time"'
        if name == "__timeFilter":
            return f"{args[0]} BETWEEN '{_rfc3339(FROM)}' AND '{_rfc3339(TO)}'"
        if name == "__timeFrom":
            return f"'{_rfc3339(FROM)}'"
        if name == "__timeTo":
            return f"'{_rfc3339(TO)}'"
        if name in ("__timeGroup", "__timeGroupAlias"):
            seconds = _interval_s(args[1])
            if timescaledb:
                group = f"time_bucket('{seconds:.3f}s',{args[0]})"
            else:
                group = f"floor(extract(epoch from {args[0]})/{seconds:g})*{seconds:g}"
            return group + (' AS "time"' if name == "__timeGroupAlias" else "")
        if name == "__unixEpochFilter":
            return f"{args[0]} >= {int(FROM.timestamp())} AND {args[0]} <= {int(TO.timestamp())}"
        raise AssertionError(f"a macro this test does not know: ${name}")

    expanded = MACRO.sub(macro, query)
    assert "$" not in expanded, f"an unexpanded macro or variable: {expanded}"
    return expanded


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def panels(board: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for p in board["panels"]:
        yield p
        yield from p.get("panels", [])  # rows


def queries(board: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, SQL) of every query: the panels' targets and the template variables."""
    out = [
        (f"panel {p['title']!r} target {t['refId']}", t["rawSql"])
        for p in panels(board)
        for t in p.get("targets", [])
    ]
    for v in board["templating"]["list"]:
        if v["type"] == "query":
            q = v["query"]
            out.append((f"variable {v['name']}", q if isinstance(q, str) else q["rawSql"]))
    return out


def provisioned_datasource() -> dict[str, Any]:
    data = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "vitalab.yml").read_text())
    [ds] = data["datasources"]
    assert isinstance(ds, dict)
    return ds


# ---------------------------------------------------------------------------------------------- structure


def test_every_panel_uses_the_provisioned_data_source_and_has_a_query() -> None:
    ds = provisioned_datasource()
    assert ds["type"] == "grafana-postgresql-datasource"
    board = dashboard()
    assert board["uid"]
    assert board["title"]
    assert not board["editable"]
    seen = 0
    for p in panels(board):
        if p["type"] == "row":
            continue
        assert p["datasource"] == {"type": ds["type"], "uid": ds["uid"]}, p["title"]
        assert p["targets"], p["title"]
        for t in p["targets"]:
            assert t.get("datasource", p["datasource"]) == p["datasource"], p["title"]
            assert t["rawQuery"] is True
            assert t["format"] in ("table", "time_series"), p["title"]
            seen += 1
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["site"]["datasource"]["uid"] == ds["uid"]
    assert seen >= 10
    # what the operators asked for is on it
    titles = " ".join(p["title"].lower() for p in panels(board))
    for word in ("utilisation", "occupancy", "health", "alerts"):
        assert word in titles, word


def test_the_dashboard_provider_reads_the_mounted_directory() -> None:
    data = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "vitalab.yml").read_text())
    [provider] = data["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == "/etc/vitalab/grafana/dashboards"  # tests/deploy/test_compose.py
    assert provider["allowUiUpdates"] is False


def test_the_macro_expansion_is_grafanas() -> None:
    """Worked examples from Grafana's PostgreSQL data source documentation (macros table)."""
    assert expand("$__time(dateColumn)", timescaledb=False) == 'dateColumn AS "time"'
    assert expand("$__timeFilter(dateColumn)", timescaledb=False) == (
        "dateColumn BETWEEN '2026-11-16T00:00:00Z' AND '2026-11-23T12:00:00Z'"
    )
    assert expand("$__timeGroup(dateColumn,'5m')", timescaledb=False) == (
        "floor(extract(epoch from dateColumn)/300)*300"
    )
    assert expand("$__timeGroup(dateColumn, 1h)", timescaledb=True) == "time_bucket('3600.000s',dateColumn)"
    assert expand("$__timeGroupAlias(dateColumn,'5m')", timescaledb=False) == (
        'floor(extract(epoch from dateColumn)/300)*300 AS "time"'
    )
    assert expand("WHERE s = ${site:sqlstring}", timescaledb=False, site="o'hara") == "WHERE s = 'o''hara'"
    with pytest.raises(AssertionError):
        expand("$__nothing(x)", timescaledb=False)


# ---------------------------------------------------------------------------------------------- the queries


def _seed(url: str) -> None:
    """gym-a with three machines and a strap, a week of hourly utilisation, samples, counters, alerts."""
    with psycopg.connect(url) as conn:
        conn.execute(
            "INSERT INTO sites (site_id, timezone) VALUES ('gym-a', 'Europe/Oslo'), ('gym-b', 'UTC')"
        )
        conn.execute(
            "INSERT INTO devices (device_id, site_id, kind, model, firmware, online, training, errors, "
            "battery_pct, state_at, last_seen) VALUES "
            "('tm-1', 'gym-a', 'treadmill', 'T9', '4.2', true, 'manual', '{}', NULL, %(t)s, %(t)s), "
            "('bike-1', 'gym-a', 'bike', NULL, '1.0', true, 'idle', '{E42}', NULL, %(t)s, %(t)s), "
            "('row-1', 'gym-a', 'rower', NULL, NULL, false, NULL, '{}', NULL, %(t)s, %(t)s), "
            "('strap-1', 'gym-a', 'hr_strap', NULL, NULL, true, NULL, '{}', 71, %(t)s, %(t)s)",
            {"t": TO - timedelta(hours=1)},
        )
        conn.execute(
            "INSERT INTO device_hourly (device_id, hour, site_id, in_session_s, minutes_with_data, "
            "sessions_started) SELECT d, %s + g * interval '1 hour', 'gym-a', (g * 37) %% 3600, 30, g %% 2 "
            "FROM unnest(ARRAY['tm-1', 'bike-1', 'row-1']) d, generate_series(0, 24 * 7) g",
            (FROM,),
        )
        conn.execute(
            "INSERT INTO samples (device_id, t, site_id, power_w, hr_bpm) SELECT 'bike-1', "
            "%s + g * interval '1 minute', 'gym-a', 150, 120 FROM generate_series(0, 600) g",
            (TO - timedelta(hours=12),),
        )
        conn.execute(
            "INSERT INTO device_counters (device_id, site_id, distance_m, running_s, service_distance_m, "
            "service_running_s, last_service_at, computed_at) VALUES "
            "('tm-1', 'gym-a', 5200000, 3700000, 5200000, 3700000, NULL, %(t)s), "
            "('bike-1', 'gym-a', 0, 7200, 0, 3600, %(t)s, %(t)s)",
            {"t": TO},
        )
        conn.execute(
            "INSERT INTO alerts (site_id, subject, subject_id, kind, started_at, ended_at, detail, "
            "updated_at) VALUES ('gym-a', 'device', 'tm-1', 'service_due', %(a)s, NULL, '{}', %(a)s), "
            "('gym-a', 'device', 'row-1', 'silent', %(a)s, %(b)s, '{\"reason\": \"offline\"}', %(b)s), "
            "('gym-a', 'gateway', 'gw-1', 'gateway_offline', %(b)s, NULL, '{}', %(b)s)",
            {"a": TO - timedelta(days=2), "b": TO - timedelta(hours=3)},
        )


@pytest.fixture
def reader(database_url: str, tmp_path: Path) -> Iterator[str]:
    """The URL of the read-only login deploy/grafana/init.sh makes (under a name of this test's own: logins
    are shared by every database of the server), dropped afterwards."""
    psql = shutil.which("psql")
    if psql is None:
        missing("psql is not installed (apt-get install postgresql-client)")
    params = conninfo.conninfo_to_dict(database_url)
    user = f"grafana_test_{uuid.uuid4().hex[:10]}"
    env = {
        **os.environ,
        "PGHOST": str(params.get("host", "127.0.0.1")),
        "PGPORT": str(params.get("port", 5432)),
        "PGUSER": str(params.get("user", "postgres")),
        "PGPASSWORD": str(params.get("password", "")),
        "PGDATABASE": str(params["dbname"]),
        "GRAFANA_SECRETS_DIR": str(tmp_path / "secrets"),
        "GRAFANA_DB_USER": user,
        "GRAFANA_ADMIN_PASSWORD": "",
    }
    for _ in range(2):  # idempotent: a second run changes nothing that matters
        done = subprocess.run(
            ["sh", str(GRAFANA / "init.sh")], env=env, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
    secrets = tmp_path / "secrets"
    assert len((secrets / "admin.password").read_text()) == 32
    assert (secrets / "db.password").stat().st_mode & 0o777 == 0o400
    password = (secrets / "db.password").read_text()
    login = dict(params, user=user, password=password)
    try:
        yield conninfo.make_conninfo(**login)  # type: ignore[arg-type]
    finally:
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(psycopg.sql.SQL("DROP ROLE IF EXISTS {}").format(psycopg.sql.Identifier(user)))


@pytest.fixture
def time_bucket(database_url: str) -> None:
    """TimescaleDB's ``time_bucket(interval, timestamptz)`` for the plain PostgreSQL of the tests: the same
    buckets for whole minutes and hours (origin 2000-01-03, a Monday, as TimescaleDB's)."""
    with psycopg.connect(database_url) as conn:
        conn.execute(
            "CREATE FUNCTION public.time_bucket(bucket interval, ts timestamptz) RETURNS timestamptz "
            "LANGUAGE sql IMMUTABLE "
            "AS $$ SELECT date_bin(bucket, ts, TIMESTAMPTZ '2000-01-03 00:00:00+00') $$"
        )


@pytest.mark.parametrize("timescaledb", [True, False], ids=["timescaledb", "postgresql"])
def test_every_query_runs_against_the_schema_as_the_read_only_login(
    database_url: str, reader: str, time_bucket: None, timescaledb: bool
) -> None:
    _seed(database_url)
    board = dashboard()
    found = queries(board)
    assert len(found) >= 11
    rows_of: dict[str, int] = {}
    with psycopg.connect(reader, autocommit=True) as conn:
        for where, raw in found:
            query = expand(raw, timescaledb=timescaledb)
            try:
                conn.execute(f"EXPLAIN {query}")
                rows = conn.execute(f"SELECT * FROM ({query}) AS panel LIMIT 1000").fetchall()
            except psycopg.Error as exc:
                raise AssertionError(f"{where}: {exc}\n{query}") from exc
            rows_of[where] = len(rows)
        # what the login may not do
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT secret_sha256 FROM api_keys")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT participant_id FROM sessions")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT count(*) FROM audit_log")  # who read what, from which address
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            conn.execute("INSERT INTO sites (site_id) VALUES ('nope')")
    # the seeded site fills every panel (a query that silently matches nothing is a broken panel too)
    empty = [where for where, n in rows_of.items() if n == 0]
    assert empty == [], empty
    assert rows_of["variable site"] == 2
