"""Helpers the benchmarks share (beyond the private broker in broker.py)."""

from __future__ import annotations

import asyncio
import time

from ingest.batch import Batch
from ingest.service import IngestConfig, Ingester, router_from_settings
from ingest.source import Source
from ingest.writer import WriteResult
from vitalab.settings import Settings


async def timed_drain(src: Source, url: str, settings: Settings, total: int) -> tuple[float, Ingester]:
    """Run an ingester on ``src`` until it has committed ``total`` samples (600 s at the most); its committed
    samples/s from its start to its last commit, and the ingester (for its metrics)."""
    committed, last = 0, 0.0

    def on_commit(batch: Batch, result: WriteResult) -> None:
        nonlocal committed, last
        committed += result.samples_inserted
        last = time.perf_counter()

    t0 = time.perf_counter()
    ingester = Ingester(
        src,
        url,
        router=router_from_settings(settings),
        config=IngestConfig.from_settings(settings),
        on_commit=on_commit,
    )
    task = asyncio.create_task(ingester.run())
    while committed < total and time.perf_counter() - t0 < 600:  # noqa: ASYNC110  (polls a counter)
        await asyncio.sleep(0.02)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    return committed / (last - t0), ingester
