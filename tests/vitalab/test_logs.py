from __future__ import annotations

import json
import logging

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
