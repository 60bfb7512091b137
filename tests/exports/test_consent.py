"""Consent is part of the export query: windows, scopes, withdrawal, sites; checked against the Python model
of tests/exports/world.py, which re-implements the rule over plain reads of the tables."""

from __future__ import annotations

import csv
from datetime import datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from tests.exports.conftest import Run
from tests.exports.world import KEY_A, KEY_B, KEY_C, SNAPSHOT, Model, P, by_participant, minutes, pseudonym


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def t(s: str) -> datetime:
    return datetime.fromisoformat(s)


def test_samples_follow_consent_windows_scopes_and_ownership(world: str, run_export: Run) -> None:
    out, _ = run_export("s-a", ["samples"], "csv")
    got = [(r["pseudonym"], t(r["t"]), r["device_kind"]) for r in read_csv(out / "samples.csv")]
    want = [(p, ts, kind) for p, ts, kind, _, _ in Model(world, "s-a").sample_rows()]
    assert got == want
    counts = by_participant(got)
    p1, p2, p3, p4 = (pseudonym(KEY_A, P[f"P{i}"]) for i in range(1, 5))
    # P1: strap while checked out (2 h every 2 s) + bike during the session (30 min inclusive, every 1 s)
    assert counts[p1] == 3600 + 1801
    # P2 narrowed consent to derived only: no raw samples at all, even from before the change
    assert p2 not in counts
    # P3 consented at T0+30min: strap from then to the end of the check-out, the second session only
    assert counts[p3] == 900 + 901
    assert min(ts for p, ts, _ in got if p == p3) == minutes(30)
    # P4 withdrew before the export: nothing
    assert p4 not in counts


def test_a_withdrawal_empties_the_next_export(world: str, run_export: Run) -> None:
    p1 = pseudonym(KEY_A, P["P1"])
    before, _ = run_export("s-a", ["samples", "sessions", "rr"], "csv")
    assert any(r["pseudonym"] == p1 for r in read_csv(before / "samples.csv"))
    with psycopg.connect(world) as conn:
        conn.execute(
            "INSERT INTO study_consents (study_id, participant_id, scopes, withdrawn_at, recorded_at, "
            "recorded_by) "
            "VALUES ('s-a', %s, '{}', %s, %s, 'kiosk')",
            (P["P1"], SNAPSHOT + timedelta(minutes=1), SNAPSHOT + timedelta(minutes=1)),
        )
    # an export whose consent snapshot precedes the withdrawal still has P1; the next one has nothing
    again, _ = run_export("s-a", ["samples"], "csv")
    assert any(r["pseudonym"] == p1 for r in read_csv(again / "samples.csv"))
    after, result = run_export(
        "s-a", ["samples", "sessions", "rr"], "csv", snapshot=SNAPSHOT + timedelta(hours=1)
    )
    for name in ("samples.csv", "sessions.csv", "rr.csv"):
        assert all(r["pseudonym"] != p1 for r in read_csv(after / name)), name
    assert P["P1"] not in result.participants


def test_sessions_only_wholly_inside_consent(world: str, run_export: Run) -> None:
    out, _ = run_export("s-a", ["sessions"], "csv")
    got = [(r["pseudonym"], t(r["started_at"]), t(r["ended_at"])) for r in read_csv(out / "sessions.csv")]
    want = [(p, a, b) for p, a, b, _ in Model(world, "s-a").session_rows()]
    assert got == want
    p3 = pseudonym(KEY_A, P["P3"])
    # P3's session before their consent is not exported, the one after is; P2 keeps derived metrics
    assert [(a, b) for p, a, b in got if p == p3] == [(minutes(35), minutes(50))]
    assert pseudonym(KEY_A, P["P2"]) in {p for p, _, _ in got}
    assert pseudonym(KEY_A, P["P4"]) not in {p for p, _, _ in got}


def test_rr_needs_its_own_scope(world: str, run_export: Run) -> None:
    out, _ = run_export("s-a", ["rr"], "csv")
    got = [(r["pseudonym"], t(r["t"]), int(r["idx"]), float(r["rr_ms"])) for r in read_csv(out / "rr.csv")]
    assert got == Model(world, "s-a").rr_rows()
    assert set(by_participant(got)) == {pseudonym(KEY_A, P["P1"])}  # only P1 agreed to rr_intervals


def test_a_study_sees_only_its_own_sites(world: str, run_export: Run) -> None:
    out, result = run_export("s-b", ["samples"], "csv")
    got = read_csv(out / "samples.csv")
    # P1 (gym-a) has a consent record in s-b (written straight into the table), but gym-a is not a site of s-b
    assert {r["pseudonym"] for r in got} == {pseudonym(KEY_B, P["P5"])}
    assert len(got) == 1800  # strap-b1 every 2 s during its 1 h check-out
    assert result.participants == [P["P5"]]


def test_time_range_and_pseudonym_subset(world: str, run_export: Run) -> None:
    p1, p3 = pseudonym(KEY_A, P["P1"]), pseudonym(KEY_A, P["P3"])
    out, _ = run_export("s-a", ["samples"], "csv", since=minutes(40), until=minutes(45), pseudonyms=[p3])
    got = read_csv(out / "samples.csv")
    assert {r["pseudonym"] for r in got} == {p3}
    assert all(minutes(40) <= t(r["t"]) < minutes(45) for r in got)
    want = [r for r in Model(world, "s-a").sample_rows() if r[0] == p3 and minutes(40) <= r[1] < minutes(45)]
    assert [(r["pseudonym"], t(r["t"])) for r in got] == [(r[0], r[1]) for r in want]
    assert p1 not in {r["pseudonym"] for r in got}


def test_participants_profile_is_minimised(world: str, run_export: Run) -> None:
    out, _ = run_export("s-a", ["participants"], "csv")
    rows = read_csv(out / "participants.csv")
    assert [r["pseudonym"] for r in rows] == sorted(pseudonym(KEY_A, P[p]) for p in ("P1", "P2", "P3"))
    first = next(r for r in rows if r["pseudonym"] == pseudonym(KEY_A, P["P1"]))
    # born 1981, study starts 2026: 45 -> 40-49; no birth year without full_profile agreed
    assert first["age_band"] == "40-49"
    assert first["birth_year"] == ""
    assert first["weight_kg"] == ""
    text = (out / "participants.csv").read_text()
    assert str(P["P1"]) not in text
    assert "1981" not in text


@pytest.mark.parametrize("study", ["s-a", "s-c"])
def test_no_internal_id_reaches_an_export(world: str, run_export: Run, study: str) -> None:
    out, _ = run_export(study, ["samples", "sessions", "rr", "daily", "participants"], "csv")
    with psycopg.connect(world) as conn:
        session_ids = [str(r[0]) for r in conn.execute("SELECT session_id FROM sessions")]
    for path in out.glob("*.csv"):
        text = path.read_text()
        assert not any(str(p) in text for p in P.values()), path
        if path.name != "data_dictionary.csv":
            assert "strap-a" not in text, path
            assert "bike-a" not in text, path
    sessions = read_csv(out / "sessions.csv")
    assert not {r["session_ref"] for r in sessions} & set(session_ids)


def test_pseudonyms_are_stable_within_and_unlinkable_across_studies(world: str, run_export: Run) -> None:
    first, _ = run_export("s-a", ["samples"], "csv")
    second, _ = run_export("s-a", ["samples"], "csv")
    other, _ = run_export("s-c", ["samples"], "csv")
    a = {r["pseudonym"] for r in read_csv(first / "samples.csv")}
    assert a == {r["pseudonym"] for r in read_csv(second / "samples.csv")}
    c = {r["pseudonym"] for r in read_csv(other / "samples.csv")}
    assert a == {pseudonym(KEY_A, P[p]) for p in ("P1", "P3")}
    assert c == {pseudonym(KEY_C, P["P1"])}
    assert not a & c
    # the SQL's HMAC is RFC 2104 (Python's hmac) with each study's own key, on every participant
    with psycopg.connect(world) as conn:
        from psycopg import sql

        from api.exports.pseudonyms import pads, sql_participant

        for key in (KEY_A, KEY_C):
            pd = pads(key)
            query = sql.SQL("SELECT participant_id, {} FROM participants").format(
                sql_participant(sql.SQL("participant_id"))
            )
            rows = conn.execute(query, {"ipad": pd.inner, "opad": pd.outer}).fetchall()
            assert {r[1] for r in rows} == {pseudonym(key, r[0]) for r in rows}
            assert len(rows) == 5


def test_daily_rows_only_for_wholly_consented_days(world: str, run_export: Run) -> None:
    # two days after T0: P1 consented from 2026-11-01 08:00 (that day is not whole, 2026-11-02 is); P3 from
    # 2026-11-02 08:30 (no whole day); P2 and P4 have no daily rows / withdrew
    out, _ = run_export("s-a", ["daily"], "csv", snapshot=SNAPSHOT + timedelta(days=2))
    rows = [(r["pseudonym"], r["day"]) for r in read_csv(out / "daily.csv")]
    assert rows == [(pseudonym(KEY_A, P["P1"]), "2026-11-02")]
