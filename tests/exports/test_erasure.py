"""Erasure of a participant over the export tests' world (plain PostgreSQL): nothing of them is left in any
table that names a participant (found through information_schema, so a table added later is checked too),
their strap's data inside its assignment window is gone while the rest of the world is untouched, the
analytics job does not bring them back, the report lists the export that held them, and the audit log keeps
a tombstone without their profile."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import psycopg
import pytest
from psycopg import sql
from typer.testing import CliRunner

from analytics.jobs import run_once
from api.exports import engine, jobs
from api.exports.engine import ExportParams
from api.exports.jobs import Worker
from api.research_models import ErasureReport
from api.security import Caller, Scope
from api.services import erasure
from tests.api.support import app_at, assert_problem, serve
from tests.exports.world import KEY_A, SNAPSHOT, T0, P, minutes, pseudonym
from tests.support.helpers import make_key
from vitalab.cli import app as vitalab_cli

WINDOW = (T0, minutes(120))
"""strap-a1 was P1's from T0 to T0 + 2 h (the world's assignment); it sampled from T0 - 30 min to T0 + 3 h."""
LATER = T0 + timedelta(days=2)
"""When the analytics job runs: the world's day is over (its daily rollups are computed)."""


def participant_columns(conn: psycopg.Connection) -> list[tuple[str, str]]:
    """Every (table, column) of the schema that names a participant."""
    rows = conn.execute(
        "SELECT c.table_name, c.column_name FROM information_schema.columns c "
        "JOIN information_schema.tables t USING (table_schema, table_name) "
        "WHERE c.table_schema = 'public' AND t.table_type = 'BASE TABLE' "
        "AND c.column_name LIKE '%%participant%%' "
        "ORDER BY 1, 2"
    ).fetchall()
    return [(str(t), str(c)) for t, c in rows]


def rows_of(conn: psycopg.Connection, participant: UUID) -> dict[str, int]:
    found = {}
    for table, column in participant_columns(conn):
        query = sql.SQL("SELECT count(*) FROM {} WHERE {}::text = %s").format(
            sql.Identifier(table), sql.Identifier(column)
        )
        row = conn.execute(query, (str(participant),)).fetchone()
        assert row is not None
        found[f"{table}.{column}"] = int(row[0])
    return found


def counts(conn: psycopg.Connection) -> dict[str, Any]:
    def n(query: str, *args: Any) -> int:
        row = conn.execute(query, args).fetchone()
        assert row is not None
        return int(row[0])

    inside = "device_id = 'strap-a1' AND t >= %s AND t < %s"
    outside = "device_id = 'strap-a1' AND NOT (t >= %s AND t < %s)"
    return {
        "strap inside": n(f"SELECT count(*) FROM samples WHERE {inside}", *WINDOW),
        "strap outside": n(f"SELECT count(*) FROM samples WHERE {outside}", *WINDOW),
        "strap rr inside": n(f"SELECT count(*) FROM rr_intervals WHERE {inside}", *WINDOW),
        "strap rr outside": n(f"SELECT count(*) FROM rr_intervals WHERE {outside}", *WINDOW),
        "strap events inside": n(f"SELECT count(*) FROM device_events WHERE {inside}", *WINDOW),
        "strap letters": n("SELECT count(*) FROM dead_letters WHERE device_id = 'strap-a1'"),
        "bike samples": n("SELECT count(*) FROM samples WHERE device_id = 'bike-a1'"),
        "others' samples": n("SELECT count(*) FROM samples WHERE device_id NOT IN ('strap-a1', 'bike-a1')"),
        "others' sessions": n("SELECT count(*) FROM sessions WHERE participant_id <> %s", P["P1"]),
        "others' consents": n("SELECT count(*) FROM study_consents WHERE participant_id <> %s", P["P1"]),
        "participants": n("SELECT count(*) FROM participants"),
    }


def add_traces_of_p1(url: str) -> None:
    """What the world lacks: P1 checked in on bike-a1 for their session, a state event and a dead letter of
    their strap while they had it."""
    with psycopg.connect(url) as conn:
        conn.execute(
            "INSERT INTO device_assignments (device_id, participant_id, started_at, ended_at) "
            "VALUES ('bike-a1', %s, %s, %s)",
            (P["P1"], minutes(10), minutes(40)),
        )
        conn.execute(
            "INSERT INTO device_events (device_id, t, kind, detail) VALUES ('strap-a1', %s, 'online', '{}')",
            (minutes(1),),
        )
        conn.execute(
            "INSERT INTO dead_letters (received_at, topic, reason, detail, device_id, payload, payload_size) "
            "VALUES (%s, 'vitalab/v1/gym-a/dev/strap-a1/telemetry', 'schema', 'bad', 'strap-a1', "
            "'\\x7b7d'::bytea, 2)",
            (minutes(5),),
        )


@pytest.mark.asyncio
async def test_erasure_leaves_nothing_of_the_participant_and_reports_their_exports(
    world: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    add_traces_of_p1(world)
    run_once(world, now=LATER, full=True)  # the rollups of the straps (device_hourly, quality, ...)
    researcher = await make_key(world, "researcher", Scope.parse(["study:s-a"]), name="r")
    app = app_at(world, SNAPSHOT, export_worker=False, export_dir=tmp_path)
    async with serve(app, key=researcher) as http:
        asked = await http.post("/v1/studies/s-a/exports", json={"datasets": ["sessions"], "format": "csv"})
        assert asked.status_code == 202, asked.text
        outcome = Worker(world, tmp_path, clock=lambda: SNAPSHOT).run_one()
        assert outcome is not None
        assert outcome.status == "succeeded"
        exported = (await http.get(f"{asked.headers['location']}/files/sessions.csv")).text
        assert pseudonym(KEY_A, P["P1"]) in exported
        assert_problem(await http.post(f"/v1/participants/{P['P1']}/erase"), 403)  # admins only

    with psycopg.connect(world) as conn:
        before = counts(conn)
        held = rows_of(conn, P["P1"])
        profile = conn.execute(
            "SELECT birth_year, weight_kg FROM participants WHERE participant_id = %s", (P["P1"],)
        ).fetchone()
        rollups = conn.execute(
            "SELECT (SELECT count(*) FROM device_hourly WHERE device_id = 'strap-a1' "
            "AND hour + interval '1 hour' > %s AND hour < %s), "
            "(SELECT count(*) FROM device_quality_daily WHERE device_id = 'strap-a1')",
            WINDOW,
        ).fetchone()
    # the world holds P1 in every kind of table, so that the erasure has something to prove
    for table in ("participants", "device_assignments", "sessions", "participant_daily", "study_enrolments"):
        assert held[f"{table}.participant_id"] > 0, (table, held)
    assert held["study_consents.participant_id"] > 0
    assert held["export_contents.participant_id"] == 1
    assert before["strap inside"] > 0
    assert before["strap outside"] > 0
    assert before["strap events inside"] == 1
    assert before["strap letters"] == 1
    assert rollups is not None
    assert min(rollups) > 0
    assert profile is not None

    async with serve(app_at(world, SNAPSHOT + timedelta(hours=1), export_worker=False)) as admin:
        r = await admin.post(f"/v1/participants/{P['P1']}/erase")
        assert r.status_code == 200, r.text
        report = r.json()
        assert_problem(await admin.post(f"/v1/participants/{P['P1']}/erase"), 404, "path.participant_id")
    assert report["participant_id"] == str(P["P1"])
    assert [e["export_id"] for e in report["exports"]] == [asked.json()["export_id"]]
    assert report["exports"][0]["study_id"] == "s-a"
    assert report["personal_devices"] == ["strap-a1"]
    assert report["rows"]["samples"] == before["strap inside"]
    assert report["rows"]["participants"] == 1

    with psycopg.connect(world) as conn:
        after = counts(conn)
        left = rows_of(conn, P["P1"])
        tombstone = conn.execute(
            "SELECT key_id, role, resource, outcome FROM audit_log WHERE action = 'erase participant'"
        ).fetchall()
        strap_rollups = conn.execute(
            "SELECT (SELECT count(*) FROM device_hourly WHERE device_id = 'strap-a1' "
            "AND hour + interval '1 hour' > %s AND hour < %s), "
            "(SELECT count(*) FROM device_quality_daily WHERE device_id = 'strap-a1')",
            WINDOW,
        ).fetchone()
    assert set(left) >= {"participants.participant_id", "study_consents.participant_id"}
    assert left == dict.fromkeys(left, 0), left
    # their strap's data inside their window is gone, its data before and after stays, the rest is untouched
    assert after == before | {
        "strap inside": 0,
        "strap rr inside": 0,
        "strap events inside": 0,
        "strap letters": 0,
        "participants": before["participants"] - 1,
    }
    assert strap_rollups == (0, 0)
    # one tombstone: who and how much, nothing of the profile
    ((key_id, role, resource, outcome),) = tombstone
    assert role == "admin"
    assert key_id is not None
    assert resource == f"participant {P['P1']}"
    assert str(profile[0]) not in outcome
    assert "rows" in outcome

    # the analytics job, run again over everything, does not bring P1 back
    run_once(world, now=LATER + timedelta(hours=1), full=True)
    with psycopg.connect(world) as conn:
        assert rows_of(conn, P["P1"]) == left
    # and the next export has nothing of them
    async with serve(
        app_at(world, SNAPSHOT, export_worker=False, export_dir=tmp_path), key=researcher
    ) as http:
        again = await http.post("/v1/studies/s-a/exports", json={"datasets": ["sessions"], "format": "csv"})
        outcome = Worker(world, tmp_path, clock=lambda: SNAPSHOT + timedelta(hours=2)).run_one()
        assert outcome is not None
        assert outcome.status == "succeeded"
        text = (await http.get(f"{again.headers['location']}/files/sessions.csv")).text
    assert pseudonym(KEY_A, P["P2"]) in text
    assert pseudonym(KEY_A, P["P1"]) not in text

    # the command line: the same erasure, its report as JSON; an unknown participant is one line, status 1
    monkeypatch.setenv("VITALAB_DATABASE_URL", world)
    cli = CliRunner()  # in a thread: the command runs its own event loop
    done = await asyncio.to_thread(cli.invoke, vitalab_cli, ["participants", "erase", "--yes", str(P["P2"])])
    assert done.exit_code == 0, done.stderr
    assert json.loads(done.stdout)["participant_id"] == str(P["P2"])
    with psycopg.connect(world) as conn:
        assert set(rows_of(conn, P["P2"]).values()) == {0}
        subjects = conn.execute(
            "SELECT subject FROM audit_log WHERE action = 'erase participant' ORDER BY id"
        ).fetchall()
    assert len(subjects) == 2
    assert str(subjects[1][0]).startswith("cli:")
    missing = await asyncio.to_thread(
        cli.invoke, vitalab_cli, ["participants", "erase", "--yes", str(P["P2"])]
    )
    assert missing.exit_code == 1
    assert missing.stderr.strip() == f"vitalab participants erase: no participant '{P['P2']}'"


def test_an_export_running_while_its_participant_is_erased_is_not_published(
    world: str, tmp_path: Path
) -> None:
    """The erasure commits while the export writes (its snapshot still holds the participant): the attempt is
    given back instead of published, and the next one has nothing of them."""
    export_id = uuid.uuid4()
    with psycopg.connect(world, autocommit=True) as conn:
        jobs.create(
            conn,
            export_id=export_id,
            subject_id="s-a",
            requested_by="tester",
            requested_at=T0,
            params=ExportParams.canonical(["sessions"], "csv"),
        )
    reports: list[ErasureReport] = []
    admin = Caller("admin", "k", None, None, None, None)

    async def erase_p1() -> ErasureReport:
        async with await psycopg.AsyncConnection.connect(world) as conn:
            return await erasure.erase(conn, P["P1"], caller=admin, now=SNAPSHOT)

    class EraseMidway:
        def __init__(self, inner: engine.Progress) -> None:
            self.inner = inner

        def totals(self, rows: Mapping[str, int]) -> None:
            self.inner.totals(rows)

        def step(self, dataset: str) -> None:
            self.inner.step(dataset)
            reports.append(asyncio.run(erase_p1()))  # committed before the export reads its rows

        def advance(self, rows: int) -> None:
            self.inner.advance(rows)

    first = jobs.Worker(world, tmp_path, clock=lambda: SNAPSHOT, on_progress=EraseMidway).run_one()
    assert first is not None
    assert first.status == "retry"
    ((report,),) = [reports]
    assert report.exports == []  # nothing published held them
    with psycopg.connect(world) as conn:
        row = conn.execute(
            "SELECT status, attempts, directory, error FROM export_jobs WHERE export_id = %s", (export_id,)
        ).fetchone()
    assert row is not None
    assert row[:3] == ("queued", 0, None)
    assert "erased" in str(row[3])
    assert list((tmp_path / str(export_id)).iterdir()) == []

    second = jobs.Worker(world, tmp_path, clock=lambda: SNAPSHOT).run_one()
    assert second is not None
    assert second.status == "succeeded"
    assert second.directory is not None
    text = (second.directory / "sessions.csv").read_text()
    assert pseudonym(KEY_A, P["P2"]) in text
    assert pseudonym(KEY_A, P["P1"]) not in text
    with psycopg.connect(world) as conn:
        assert conn.execute(
            "SELECT count(*) FROM export_contents WHERE participant_id = %s", (P["P1"],)
        ).fetchone() == (0,)
