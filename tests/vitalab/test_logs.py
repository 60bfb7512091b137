from __future__ import annotations

import io
import json
import logging
import sys

import pytest

from vitalab import logs
from vitalab.logs import JsonFormatter


def test_log_lines_are_json_with_extra_fields() -> None:
    record = logging.LogRecord(
        "ingest.service", logging.WARNING, __file__, 1, "batch of %d failed", (7,), None
    )
    record.device_id = "bike-01"
    line = JsonFormatter().format(record)
    entry = json.loads(line)
    assert entry["level"] == "warning"
    assert entry["logger"] == "ingest.service"
    assert entry["msg"] == "batch of 7 failed"
    assert entry["device_id"] == "bike-01"
    assert entry["t"].endswith("+00:00")


def test_logs_follow_stderr_when_it_is_swapped_and_the_old_one_closed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A caller that swaps stderr (a test runner invoking the CLI in-process) and closes its stream must not
    leave a handler writing to the closed one."""
    first, second = io.StringIO(), io.StringIO()
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", list(root.handlers))  # restored after the test
    monkeypatch.setattr(root, "level", root.level)
    monkeypatch.setattr(sys, "stderr", first)
    logs.configure("info")
    logging.getLogger("vitalab.test").info("one")
    first.close()
    monkeypatch.setattr(sys, "stderr", second)
    logging.getLogger("vitalab.test").info("two")
    assert json.loads(second.getvalue())["msg"] == "two"
