"""Fixtures of the export tests: the seeded world in a fresh database, and a runner of exports."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import psycopg
import pytest

from api.exports import engine
from api.exports.engine import ExportParams, ExportSpec
from tests.exports.world import SNAPSHOT, T0, seed

Run = Callable[..., tuple[Path, engine.Result]]


@pytest.fixture
def world(database_url: str) -> str:
    seed(database_url)
    return database_url


@pytest.fixture
def run_export(world: str, tmp_path: Path) -> Run:
    """Run an export of the seeded world into a new directory; returns the directory and the result."""

    def run(
        study: str,
        datasets: list[str],
        fmt: str,
        *,
        snapshot: datetime = SNAPSHOT,
        export_id: uuid.UUID | None = None,
        **more: object,
    ) -> tuple[Path, engine.Result]:
        out = tmp_path / f"export-{uuid.uuid4().hex[:8]}"
        out.mkdir()
        params = ExportParams.canonical(datasets, fmt, **more)  # type: ignore[arg-type]
        spec = ExportSpec(export_id or uuid.uuid4(), study, "tester", T0, params)
        with psycopg.connect(world) as conn:
            return out, engine.run(conn, spec, out, snapshot)

    return run
