"""`vitalab keys create|list|revoke` against a real database: the key printed once works, is listed without
its secret, and stops working once revoked; every change is in the audit log."""

from __future__ import annotations

import json

import psycopg
import pytest
from typer.testing import CliRunner

from api import keys
from vitalab.cli_keys import app


def run(database_url: str, monkeypatch: pytest.MonkeyPatch, *args: str) -> tuple[int, str, str]:
    monkeypatch.setenv("VITALAB_DATABASE_URL", database_url)
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_create_list_revoke(database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    code, out, err = run(
        database_url,
        monkeypatch,
        "create",
        "--name",
        "front desk",
        "--owner",
        "desk@gym-a",
        "--role",
        "kiosk",
        "--scope",
        "site:gym-a",
    )
    assert code == 0, err
    token = out.strip()
    parts = keys.split(token)
    assert parts is not None
    key_id = parts[0]
    assert json.loads(err.splitlines()[0])["scope"] == ["site:gym-a"]

    code, out, _ = run(database_url, monkeypatch, "list")
    listed = [json.loads(line) for line in out.splitlines()]
    assert [(k["key_id"], k["role"], k["name"]) for k in listed] == [(key_id, "kiosk", "front desk")]
    assert parts[1] not in out

    code, _, err = run(database_url, monkeypatch, "revoke", token)  # the whole key names it too
    assert code == 0, err
    assert run(database_url, monkeypatch, "list")[1] == ""
    assert key_id in run(database_url, monkeypatch, "list", "--all")[1]
    assert run(database_url, monkeypatch, "revoke", "0123456789abcdef")[0] == 1

    with psycopg.connect(database_url) as conn:
        audited = conn.execute("SELECT action, resource, role FROM audit_log ORDER BY id").fetchall()
    assert audited == [("keys.create", key_id, "admin"), ("keys.revoke", key_id, "admin")]


def test_refuses_what_a_role_cannot_have(database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    base = ("create", "--name", "n", "--owner", "o")
    assert run(database_url, monkeypatch, *base, "--role", "kiosk")[0] == 2  # a kiosk needs its site
    assert run(database_url, monkeypatch, *base, "--role", "boss")[0] == 2
    assert run(database_url, monkeypatch, *base, "--role", "operator", "--scope", "town:x")[0] == 2
    code, out, _ = run(database_url, monkeypatch, *base, "--role", "admin")
    assert code == 0
    assert out.startswith("vl_")
