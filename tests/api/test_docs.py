"""/docs and /redoc work offline: their pages reference only this server, and every asset answers."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from html.parser import HTMLParser

import pytest

from tests.api.support import app_at, serve

pytestmark = pytest.mark.asyncio


class Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.urls += [v for k, v in attrs if k in ("src", "href", "spec-url") and v]


@pytest.mark.parametrize(("page", "assets"), [("/docs", 4), ("/redoc", 3)])
async def test_docs_pages_load_everything_from_this_server(
    empty_database: str, page: str, assets: int
) -> None:
    # no database needed: the pages and files are served without one
    async with serve(app_at(empty_database, datetime(2026, 11, 25, tzinfo=UTC)), key=None) as http:
        r = await http.get(page)
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/html")
        html = r.text
        assert not re.search(r"https?:|//[a-z0-9]", html.replace("window.location.origin", "")), html
        links = Links()
        links.feed(html)
        urls = links.urls + re.findall(r"""\burl: '([^']+)'""", html)
        assert len(urls) == assets, urls  # stylesheet, icon, script(s) and the schema
        for url in urls:
            assert url.startswith("/"), url
            asset = await http.get(url)
            assert asset.status_code == 200, url
            assert len(asset.content) > 1000, url
        assert "/openapi.json" in urls
