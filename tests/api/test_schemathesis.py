"""Generated calls of every operation with a valid admin key (schemathesis, in-process over ASGI, a bounded
and derandomised number of examples per operation, data that fits the schema and data that does not): never a
500, every error RFC 9457 problem details, every answer as the schema documents it (status, media type,
body).

(schemathesis's pytest fixture loader does not run under pytest 9 here, so the operations are walked by hand
with ``APIOperation.as_strategy``.)"""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.api.seed import NOW, PARTICIPANT, seed
from tests.api.seed_study import seed_study
from tests.api.support import PROBLEM, app_at
from tests.support.helpers import make_key

EXAMPLES = 25
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


def check(case: Any, key: str, statuses: Counter[int]) -> None:
    case.headers = {**(case.headers or {}), "Authorization": f"Bearer {key}"}
    response = case.call()
    statuses[response.status_code] += 1
    assert response.status_code < 500, (case.method, case.formatted_path, response.status_code, response.text)
    if response.status_code >= 400:
        assert response.headers["content-type"][0].startswith(PROBLEM)
        body = response.json()
        assert {"type", "title", "status", "detail"} <= body.keys()
        assert body["status"] == response.status_code
    case.validate_response(response, checks=CHECKS)


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_generated_calls_never_fail_the_server(
    database_url: str, mode: GenerationMode, tmp_path: Path
) -> None:
    seeded = seed(database_url)
    admin = asyncio.run(make_key(database_url))
    known = {
        "key_id": asyncio.run(make_key(database_url, "operator", name="to revoke"))[3:19],
        "device_id": "bike-1",
        "site_id": "gym-a",
        "participant_id": str(PARTICIPANT),
        "session_id": seeded.session_id,
        **seed_study(database_url, tmp_path),
        "gateway_id": "gw-1",
    }
    app = app_at(database_url, NOW, export_worker=False, export_dir=tmp_path)
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operations = []
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result.err()
        # an endless answer (the live floor's event stream) cannot be called in-process to its end: its bad
        # input is walked by tests/api/test_bad_input.py, its answers by tests/api/test_live.py
        if not result.ok().definition.raw.get("x-vitalab-stream"):
            operations.append(result.ok())
    assert len(operations) >= 19
    calls = 0
    statuses: Counter[int] = Counter()
    unbreakable: list[str] = []
    for operation in operations:
        names = re.findall(r"\{(\w+)\}", operation.path)
        strategies = [operation.as_strategy(mode)]
        if names and mode is GenerationMode.POSITIVE:  # also on stored resources, to reach the queries
            strategies.append(operation.as_strategy(mode, path_parameters={n: known[n] for n in names}))
        for strategy in strategies:

            @given(case=strategy)
            @settings(
                max_examples=EXAMPLES,
                deadline=None,
                derandomize=True,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            def run(case: Any) -> None:
                nonlocal calls
                calls += 1
                check(case, admin, statuses)

            try:
                run()
            except Unsatisfiable:  # no input that breaks the schema: an operation without parameters
                unbreakable.append(f"{operation.method.upper()} {operation.path}")
    assert calls >= len(operations) * 5
    # the key is honoured on every call: no refusal of the caller, and (positive) mostly answers
    assert not {401, 403, 429} & statuses.keys(), statuses
    if mode is GenerationMode.POSITIVE:
        assert sum(n for s, n in statuses.items() if s < 300) >= calls // 3, statuses
    assert unbreakable == ([] if mode is GenerationMode.POSITIVE else ["GET /health"])
