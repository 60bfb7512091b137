"""The operators' dashboard: a static page at ``/`` and its files under ``/static/dashboard/`` (plain HTML,
CSS and JavaScript with a vendored, pinned uPlot; no build step, nothing fetched from elsewhere).

The page and its files hold no data and need no credential (a browser cannot send a bearer header when it
navigates). The page asks for an API key once, keeps it in the tab's ``sessionStorage`` and sends it as
``Authorization: Bearer`` with every request: the reports with ``fetch``, and the live floor as a ``fetch``
stream that it parses as Server-Sent Events itself (a browser's ``EventSource`` cannot send a header, and a
key in the URL would end up in logs and the audit trail's resource column)."""

from __future__ import annotations

from pathlib import Path
from typing import Final

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC: Final = Path(__file__).resolve().parent.parent / "static" / "dashboard"
STATIC_URL: Final = "/static/dashboard"
CSP: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
"""The page loads and talks to nothing but this server."""

router = APIRouter()


@router.get("/", include_in_schema=False)
async def page() -> FileResponse:
    return FileResponse(
        STATIC / "index.html",
        media_type="text/html; charset=utf-8",
        headers={"Content-Security-Policy": CSP, "Cache-Control": "no-cache"},
    )


def install(app: FastAPI) -> None:
    """The page at ``/`` and its files under :data:`STATIC_URL`."""
    app.include_router(router)
    app.mount(STATIC_URL, StaticFiles(directory=STATIC), name="dashboard")
