"""``python -m vitalab.broker``: the commands an operator runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from vitalab.broker import MosquittoAuth, verify_password
from vitalab.broker.cli import app

runner = CliRunner()


def invoke(*args: str) -> tuple[int, str]:
    """Exit code and what the command printed on stdout (stderr carries log lines)."""
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout


def invoke_err(*args: str) -> tuple[int, str]:
    """Exit code and the last line on stderr (the error)."""
    result = runner.invoke(app, list(args))
    lines = result.stderr.strip().splitlines()
    return result.exit_code, lines[-1] if lines else ""


def test_add_list_rotate_revoke(tmp_path: Path) -> None:
    state = str(tmp_path)
    code, out = invoke("add-device", "bike-01", "--site", "gym-a", "--state-dir", state, "--wait-s", "0")
    assert code == 0, out
    shown = json.loads(out)
    assert (shown["username"], shown["role"]) == ("bike-01", "device")
    assert verify_password(
        shown["password"], MosquittoAuth(tmp_path).accounts().require("bike-01").password_hash
    )

    code, out = invoke(
        "add-gateway", "gw-1", "--site", "gym-a", "--device", "strap-1", "--state-dir", state, "--wait-s", "0"
    )
    assert code == 0, out
    code, out = invoke("attach", "gw-1", "strap-2", "--state-dir", state, "--wait-s", "0")
    assert code == 0, out

    code, out = invoke("list", "--state-dir", state)
    assert code == 0, out
    listed = {row["username"]: row for row in map(json.loads, out.splitlines())}
    assert listed["bike-01"]["publish"][0] == "vitalab/v1/gym-a/dev/bike-01/telemetry"
    assert "vitalab/v1/gym-a/dev/strap-2/telemetry" in listed["gw-1"]["publish"]
    assert "password" not in out
    assert "$7$" not in out

    code, out = invoke("rotate", "bike-01", "--state-dir", state, "--wait-s", "0")
    assert code == 0, out
    assert json.loads(out)["password"] != shown["password"]
    code, out = invoke("revoke", "bike-01", "--state-dir", state, "--wait-s", "0")
    assert code == 0, out
    assert "bike-01" not in MosquittoAuth(tmp_path).accounts()
    assert (tmp_path / "generation").read_text() == "5\n"  # every change bumped the broker's counter


def test_errors_are_one_line_and_exit_1(tmp_path: Path) -> None:
    state = str(tmp_path)
    code, out = invoke_err("revoke", "nobody", "--state-dir", state, "--wait-s", "0")
    assert (code, out.strip()) == (1, "error: no account 'nobody'")
    invoke("add-device", "bike-01", "--site", "gym-a", "--state-dir", state, "--wait-s", "0")
    code, out = invoke_err("add-device", "bike-01", "--site", "gym-b", "--state-dir", state, "--wait-s", "0")
    assert (code, out.strip()) == (1, "error: username 'bike-01' is already taken by a device account")


def test_init_and_module_entry_point(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable, "-m", "vitalab.broker", "init",
            "--state-dir", str(tmp_path / "auth"), "--clients-dir", str(tmp_path / "clients"),
            "--service", "ingest=ingester", "--service", "monitor=monitor",
        ],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"issued": ["ingest", "monitor"], "certificate_created": False}
    assert sorted(p.name for p in (tmp_path / "clients").iterdir()) == [
        "ingest.password", "ingest.url", "monitor.password", "monitor.url",
    ]  # fmt: skip
