"""The operators' dashboard in a real browser: Debian's headless Chromium driven by Playwright loads ``/``
from the API served by uvicorn, against a running stack (the test's Mosquitto, PostgreSQL, the ingester, the
analytics job, and the simulated gym publishing with its kiosk checking members in through the API). It sees
the live tiles change as the gym moves, a non-empty utilisation heatmap, the occupancy chart, the health and
vitality tables, a layout that fits a tablet, and no console error; it saves a screenshot.

The gym's clock and the API's are pinned to a chosen moment (then running in real time): no wall clock.
``VITALAB_SCREENSHOT=docs/dashboard.png`` also writes the screenshot there (how the README's was made).
``playwright install`` is never called: the browser is Debian's (``apt-get install chromium``); under
``CI=true`` a missing browser fails the test."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import os
import shutil
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from analytics.jobs import run_once
from api.main import create_app
from api.routes.dashboard import STATIC
from api.security import Scope
from simulators.run import SimulationPlan, gym_config, simulate_gym
from tests.conftest import REPO, Mosquitto, free_port, missing
from tests.support.helpers import make_key, make_settings, running_ingester, scalar, wait_until

SITE = "gym-dash"
LIVE = datetime(2026, 11, 25, 9, 0, tzinfo=UTC)
"""Where the simulated history ends and the live gym begins (10:00 in Oslo)."""
HISTORY_S = 3 * 3600
CENTURY_S = 100 * 365 * 86400
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--headless=new",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]


class StartingClock:
    """The API's clock: ``at`` until :meth:`go`, then running on from there (monotonic time: read from the
    server's threads too; the event loop's clock is the same one)."""

    def __init__(self, at: datetime) -> None:
        self.at = at
        self.started: float | None = None

    def go(self) -> None:
        self.started = time.monotonic()

    def __call__(self) -> datetime:
        if self.started is None:
            return self.at
        return self.at + timedelta(seconds=time.monotonic() - self.started)


@contextlib.asynccontextmanager
async def serving(app: Any) -> AsyncIterator[str]:
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


def test_vendored_files_match_their_recorded_sha256() -> None:
    """The charting library is pinned: what ships is what vendor/README.md records."""
    readme = (STATIC / "vendor" / "README.md").read_text()
    checked = 0
    for name in ("uPlot.iife.min.js", "uPlot.min.css"):
        digest = hashlib.sha256((STATIC / "vendor" / name).read_bytes()).hexdigest()
        row = next(line for line in readme.splitlines() if line.startswith(f"| `{name}`"))
        assert digest in row, (name, digest)
        checked += 1
    assert checked == 2
    assert "MIT" in (STATIC / "vendor" / "LICENSE.uPlot").read_text()
    # the page loads nothing from elsewhere
    for page in ("index.html", "dashboard.js", "dashboard.css"):
        text = (STATIC / page).read_text()
        assert "http://" not in text
        assert "https://" not in text, page


async def _history_ingested(url: str) -> bool:
    newest = await scalar(url, "SELECT max(t) FROM samples")
    return isinstance(newest, datetime) and newest >= LIVE - timedelta(seconds=90)


@pytest.mark.asyncio
async def test_the_dashboard_in_a_real_browser(
    mosquitto: Mosquitto, database_url: str, tmp_path: Path
) -> None:
    if not os.access(CHROMIUM, os.X_OK):
        missing(f"{CHROMIUM} is not installed (apt-get install chromium)")
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        missing("playwright is not installed (pip install -e '.[dev]')")
        raise
    with psycopg.connect(database_url) as conn:
        conn.execute("INSERT INTO sites (site_id, timezone) VALUES (%s, 'Europe/Oslo')", (SITE,))
    settings = make_settings(
        site=SITE,
        site_timezone="Europe/Oslo",
        ingest_client_id="ingest-dashboard",
        ingest_batch_rows=5000,
        max_past_s=CENTURY_S,
        live_tick_s=0.5,
    )
    kiosk = await make_key(database_url, "kiosk", Scope(frozenset({SITE}), frozenset()), name="kiosk")
    operator = await make_key(database_url, "operator", Scope(frozenset({SITE}), frozenset()), name="desk")
    clock = StartingClock(LIVE)
    app = create_app(settings, database_url, clock=clock, live_mqtt=mosquitto.target)
    config = gym_config(settings, demo=True)
    live_plan = SimulationPlan(
        devices=6,
        seed=11,
        raw_share=0.34,  # two machines speak BLE/ANT+ frames through the in-process gateway
        mix=("bike", "treadmill", "rower", "cross_trainer"),
        gym=config,
        start=LIVE,
        registered_from=LIVE - timedelta(seconds=HISTORY_S, minutes=1),
        samples_per_message=1,
    )
    async with running_ingester(settings, mosquitto.target, database_url), serving(app) as url:
        live_plan = dataclasses.replace(live_plan, api_url=url, api_key=kiosk)
        # the morning so far, as fast as it goes: members, check-ins and sessions for the reports
        history = dataclasses.replace(
            live_plan,
            duration_s=0,
            backfill_s=HISTORY_S,
            close_at_end=False,
            gateway_id="sim-gw-history",
            raw_share=0.0,
            samples_per_message=50,
        )
        await simulate_gym(mosquitto.target, SITE, history, data_dir=tmp_path)
        await wait_until(lambda: _history_ingested(database_url), timeout_s=120, what="the history ingested")
        report = await asyncio.to_thread(run_once, database_url, now=LIVE)
        assert report.sessions_open >= 0
        # the gym goes on live, on the API's clock
        clock.go()
        gym = asyncio.create_task(simulate_gym(mosquitto.target, SITE, live_plan, data_dir=tmp_path))
        try:
            shot, shown = await _browse(async_playwright, url, operator, tmp_path)
            # the vitality table: a row per week and group, a suppressed group's every figure shown as such
            async with httpx.AsyncClient(
                base_url=url, headers={"Authorization": f"Bearer {operator}"}
            ) as http:
                r = await http.get(f"/v1/sites/{SITE}/vitality", params={"breakdown": "age_band"})
            assert r.status_code == 200, r.text
            cells = r.json()["cells"]
            assert cells
            assert shown == [5 if c["suppressed"] else 0 for c in _page_order(cells)]
        finally:
            gym.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await gym
    assert shot.stat().st_size > 20_000
    wanted = os.environ.get("VITALAB_SCREENSHOT")
    if wanted:
        shutil.copyfile(shot, REPO / wanted if not Path(wanted).is_absolute() else Path(wanted))


async def _browse(async_playwright: Any, url: str, key: str, tmp_path: Path) -> tuple[Path, list[int]]:
    errors: list[str] = []
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            context = await browser.new_context(viewport={"width": 1440, "height": 1000})
            page = await context.new_page()

            def on_console(msg: Any) -> None:
                if msg.type in ("error", "assert"):
                    errors.append(f"console {msg.type}: {msg.text} ({msg.location})")

            page.on("console", on_console)
            page.on("pageerror", lambda exc: errors.append(f"page error: {exc}"))
            page.on("requestfailed", lambda req: _failed(req, errors))
            await page.goto(url + "/")
            # the page asks for the key once and keeps it for the tab
            await page.wait_for_selector("#login[open]")
            await page.fill("#key", key)
            await page.click("#login-form button[type=submit]")
            # the live floor: every machine of the gym as a tile, the broker connected
            await _until(
                page, "() => document.querySelectorAll('#floor .tile').length >= 6", timeout_ms=30_000
            )
            await page.wait_for_selector("#broker[data-state=connected]", timeout=30_000)
            # the tiles change as the gym moves: power and states differ from what they were
            # members on the machines (the live gym continues the morning's visits)
            await _until(page, "() => document.querySelector('#floor .tile[data-state=in_use]') !== null")
            before = await _tiles(page)
            assert len(before) >= 6
            await _until(
                page,
                """(before) => [...document.querySelectorAll('#floor .tile')].some(
                    (el) => before[el.dataset.device] !== undefined
                        && (before[el.dataset.device].power !== el.dataset.power
                            || before[el.dataset.device].state !== el.dataset.state))""",
                arg=before,
                timeout_ms=30_000,
            )
            after = await _tiles(page)
            assert after != before
            # today's utilisation: a non-empty heatmap (hours in a session this morning)
            await _until(
                page,
                "() => [...document.querySelectorAll('#heatmap .cell')].some((c) => Number(c.dataset.u) > 0)",
                timeout_ms=30_000,
            )
            cells = await page.eval_on_selector_all(
                "#heatmap .cell", "cs => cs.map(c => Number(c.dataset.u))"
            )
            assert sum(1 for u in cells if u > 0) >= 3
            assert all(0 <= u <= 1 for u in cells)
            # occupancy drawn (uPlot), the health table lists the machines, vitality is there
            await page.wait_for_selector("#occupancy canvas", timeout=30_000)
            await _until(page, "() => document.querySelectorAll('#health tr').length >= 7", timeout_ms=30_000)
            await _until(
                page, "() => document.querySelectorAll('#vitality tr').length >= 2", timeout_ms=30_000
            )
            health = await page.inner_text("#health")
            assert "bike-001" in health
            vitality = await page.evaluate(
                """() => [...document.querySelectorAll('#vitality tr')].slice(1).map(
                    (tr) => tr.querySelectorAll('td.suppressed').length)"""
            )
            shot = tmp_path / "dashboard.png"
            await page.screenshot(path=str(shot), full_page=True)
            # a tablet: one column, nothing wider than the screen
            await page.set_viewport_size({"width": 820, "height": 1180})
            # (the chart follows the resize event)
            await _until(
                page, "() => document.documentElement.scrollWidth <= window.innerWidth", timeout_ms=10_000
            )
            columns = await page.evaluate(
                "getComputedStyle(document.querySelector('main')).gridTemplateColumns"
            )
            assert len(columns.split()) == 1, columns
            await page.screenshot(path=str(tmp_path / "dashboard-tablet.png"), full_page=True)
            await context.close()
        finally:
            await browser.close()
    assert errors == [], errors
    return shot, vitality


def _page_order(cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The page's order: newest week first, each week as the API lists it (all members, then the groups)."""
    weeks = sorted({c["week"] for c in cells}, reverse=True)
    return [c for w in weeks for c in cells if c["week"] == w]


def _failed(request: Any, errors: list[str]) -> None:
    # the live stream is cut when the page goes away: not an error of the page
    if "/live" in request.url:
        return
    errors.append(f"request failed: {request.url} {request.failure}")


async def _until(page: Any, expression: str, arg: Any = None, timeout_ms: float = 30_000) -> None:
    """Poll ``expression`` in the page until it is truthy (Playwright's own wait_for_function evaluates a
    string with eval, which the page's Content-Security-Policy forbids, as it should)."""
    deadline = time.monotonic() + timeout_ms / 1000
    while not await page.evaluate(expression, arg):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_ms / 1000:g} s waiting for: {expression}")
        await asyncio.sleep(0.1)


async def _tiles(page: Any) -> dict[str, dict[str, str]]:
    found: dict[str, dict[str, str]] = await page.eval_on_selector_all(
        "#floor .tile",
        "els => Object.fromEntries(els.map(el => [el.dataset.device, "
        "{state: el.dataset.state, power: el.dataset.power, zone: el.dataset.zone}]))",
    )
    return found


@pytest.mark.asyncio
async def test_the_page_and_its_files_need_no_key_and_load_nothing_from_elsewhere(database_url: str) -> None:
    from tests.api.support import app_at, serve

    async with serve(app_at(database_url, LIVE), key=None) as http:
        page = await http.get("/")
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        csp = page.headers["content-security-policy"]
        assert "default-src 'none'" in csp
        assert "script-src 'self'" in csp
        assert "connect-src 'self'" in csp
        for src in ("/static/dashboard/dashboard.js", "/static/dashboard/vendor/uPlot.iife.min.js"):
            assert f'src="{src}"' in page.text
            r = await http.get(src)
            assert r.status_code == 200, src
            assert "javascript" in r.headers["content-type"]
        assert (await http.get("/static/dashboard/dashboard.css")).status_code == 200
        missing_file = await http.get("/static/dashboard/nothing.js")
        assert missing_file.status_code == 404
        # the data is not public: the page's first call needs the key it asks for
        assert (await http.get("/v1/devices")).status_code == 401
        assert (await http.get("/v1/sites/gym-a/live")).status_code == 401
