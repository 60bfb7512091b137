"""``vitalab decode CHAR HEX [--model M] [--sample]``: JSON on stdout, a one-line error on stderr and exit 1
for a frame that does not decode, exit 2 for hex that is not hex; never a traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime

import pytest
from typer.testing import CliRunner

from vitalab.cli import app
from vitalab.wire import decode_telemetry

runner = CliRunner()


@pytest.mark.parametrize(
    "spelled", ["44025e0bf0007a0054", "44 02 5e 0b f0 00 7a 00 54", "44:02:5E:0B:F0:00:7A:00:54"]
)
def test_decodes_an_indoor_bike_frame_however_the_hex_is_spelled(spelled: str) -> None:
    result = runner.invoke(app, ["decode", "2ad2", spelled])
    assert result.exit_code == 0, result.stderr
    out = json.loads(result.stdout)
    assert (out["record"], out["source"]) == ("IndoorBikeData", "ble:2ad2")
    assert (out["speed_kmh"], out["cadence_rpm"], out["power_w"], out["hr_bpm"]) == (29.1, 120.0, 122, 84)
    assert "sample" not in out


def test_decodes_an_ant_fe_page() -> None:
    result = runner.invoke(app, ["decode", "ant:fe:16", "0x10-19-00-00-8d-20-ff-20"])
    assert result.exit_code == 0, result.stderr
    out = json.loads(result.stdout)
    assert (out["equipment"], out["speed_mps"], out["hr_bpm"], out["fe_state_name"]) == (
        "trainer",
        8.333,
        None,
        "ready",
    )


def test_sample_is_the_normalised_wire_sample() -> None:
    before = datetime.now(UTC)
    result = runner.invoke(app, ["decode", "2a37", "16 59 a2 02", "--sample"])
    assert result.exit_code == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["hr_bpm"] == 89
    sample = out["sample"]
    assert (sample["hr_bpm"], sample["rr_ms"]) == (89.0, [674 * 1000 / 1024])
    assert datetime.fromisoformat(sample["t"]) >= before
    message = json.dumps({"v": 1, "device": "hr-1", "seq": 0, "samples": [sample]}).encode()
    decoded = decode_telemetry(message, topic_device="hr-1", now=datetime.now(UTC))
    assert decoded.rejected == []
    assert [(s.hr_bpm, s.rr_ms) for s in decoded.samples] == [(89.0, [674 * 1000 / 1024])]


def test_sample_is_null_with_notes_when_nothing_fits_the_contract() -> None:
    result = runner.invoke(app, ["decode", "2a37", "0000", "--sample"])  # heart rate 0: no contact
    assert result.exit_code == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["sample"] is None
    assert out["sample_notes"] == ["out_of_bounds:hr_bpm=0"]


def test_model_applies_its_quirks() -> None:
    frame = "fa092d09f208740077006500000d00660061000200ffffff1100"  # Life Fitness bike, cadence not flagged
    plain = runner.invoke(app, ["decode", "2ad2", frame])
    assert plain.exit_code == 1
    assert plain.stderr.strip() == "decode: ble:2ad2: 2 bytes after the last flagged field (byte 24)"
    quirked = runner.invoke(app, ["decode", "2ad2", frame, "--model", "Life Fitness Bike"])
    assert quirked.exit_code == 0, quirked.stderr
    out = json.loads(quirked.stdout)
    assert (out["cadence_rpm"], out["quirks"]) == (58.0, ["cadence_without_flag"])


def test_unknown_model_is_reported_and_the_specification_used() -> None:
    result = runner.invoke(app, ["decode", "2ad2", "44025e0bf0007a0054", "--model", "acme 3000"])
    assert result.exit_code == 0
    assert "unknown model 'acme 3000'" in result.stderr
    assert json.loads(result.stdout)["power_w"] == 122


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["2ad2", "4400ca0ca0002c"], None),  # truncated: decodes, marked
        (["2ad2", "4400ca0ca0002c017f"], "decode: ble:2ad2: 1 bytes after the last flagged field (byte 8)"),
        (["2a19", "00"], "decode: 2a19: unknown characteristic"),
        (["ant:fe:16", "1019"], "decode: ant:fe:16: an ANT+ payload has 8 bytes, got 2 (byte 2)"),
        (["2a37", ""], None),
    ],
)
def test_errors_are_one_line_on_stderr(args: list[str], message: str | None) -> None:
    result = runner.invoke(app, ["decode", *args])
    assert "Traceback" not in result.output
    if args[1] == "":
        assert result.exit_code == 2
        assert result.stderr.strip() == "decode: HEX: no bytes given"
    elif message is None:
        assert result.exit_code == 0
        assert json.loads(result.stdout)["truncated"] is True
    else:
        assert result.exit_code == 1
        assert result.stderr.strip().startswith(message)
        assert result.stdout == ""


def test_bad_hex_is_a_usage_error() -> None:
    result = runner.invoke(app, ["decode", "2ad2", "44 0g"])
    assert result.exit_code == 2
    assert result.stderr.strip() == "decode: HEX: 'g' is not a hex digit"


def test_the_installed_command_exits_1_without_a_traceback() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "vitalab", "decode", "2ada", "16"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip() == "decode: ble:2ada: reserved op code 0x16 (byte 0)"
    assert proc.stdout == ""
