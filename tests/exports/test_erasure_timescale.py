"""Erasure on TimescaleDB: the strap's samples inside the window go from compressed chunks too, and the
continuous aggregates over them are re-materialised, so no per-minute figure of the erased window is left
(skipped without ``VITALAB_TEST_TIMESCALE_URL``)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import psycopg
import pytest

from api.security import Caller
from api.services import erasure
from tests.conftest import new_database
from tests.exports.test_erasure import WINDOW
from tests.exports.world import SNAPSHOT, P, seed
from vitalab.db import migrate

pytestmark = pytest.mark.timescale
ADMIN = Caller(role="admin", key_id=None, subject="test", sites=None, studies=None, address=None)


@pytest.fixture
def ts_world(timescale_server: str) -> Iterator[str]:
    with new_database(timescale_server) as url:
        migrate(url, timescale="require")
        seed(url)
        with psycopg.connect(url, autocommit=True) as conn:
            # every chunk of the device tables compressed, the aggregates materialised over everything
            for table in ("samples", "rr_intervals"):
                conn.execute("SELECT compress_chunk(c) FROM show_chunks(%s::regclass) c", (table,))
            for view in ("samples_1m", "site_samples_1h"):
                conn.execute("CALL refresh_continuous_aggregate(%s, NULL, NULL)", (view,))
        yield url


def strap_figures(url: str) -> dict[str, int]:
    inside = "device_id = 'strap-a1' AND {t} >= %s AND {t} < %s"
    with psycopg.connect(url) as conn:

        def n(query: str) -> int:
            row = conn.execute(query, WINDOW).fetchone()
            assert row is not None
            return int(row[0])

        return {
            "samples": n("SELECT count(*) FROM samples WHERE " + inside.format(t="t")),
            "compressed chunks": n(
                "SELECT count(*) FROM timescaledb_information.chunks WHERE hypertable_name = 'samples' "
                "AND is_compressed AND range_end > %s AND range_start < %s"
            ),
            "minutes": n("SELECT count(*) FROM samples_1m WHERE " + inside.format(t="bucket")),
            "site hr minutes": n(
                "SELECT coalesce(sum(device_minutes), 0) FROM site_samples_1h "
                "WHERE site_id = 'gym-a' AND bucket >= date_trunc('hour', %s::timestamptz) AND bucket < %s"
            ),
            "other minutes": n(
                "SELECT count(*) FROM samples_1m WHERE device_id = 'strap-a2' "
                "AND bucket >= %s AND bucket < %s"
            ),
        }


@pytest.mark.asyncio
async def test_erasure_reaches_compressed_chunks_and_the_continuous_aggregates(ts_world: str) -> None:
    before = strap_figures(ts_world)
    assert before["samples"] > 0
    assert before["compressed chunks"] > 0
    assert before["minutes"] > 0  # materialised per-minute aggregates of P1's strap

    async with await psycopg.AsyncConnection.connect(ts_world) as conn:
        report = await erasure.erase(conn, P["P1"], caller=ADMIN, now=SNAPSHOT + timedelta(hours=1))
    assert report.personal_devices == ["strap-a1"]
    assert report.rows["samples"] == before["samples"]
    assert report.aggregates_refreshed == ["samples_1m", "site_samples_1h"]
    assert report.aggregates_pending is None

    after = strap_figures(ts_world)
    assert after["samples"] == 0
    assert after["minutes"] == 0
    assert after["site hr minutes"] == before["site hr minutes"] - before["minutes"]
    assert after["other minutes"] == before["other minutes"] > 0  # another participant's strap stays
