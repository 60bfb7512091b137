"""The live floor of a site as Server-Sent Events (the hub behind it: :mod:`api.live.hub`)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Final

from fastapi import APIRouter, Request
from sse_starlette import EventSourceResponse, ServerSentEvent
from sse_starlette.sse import SendTimeoutError
from starlette.types import Receive, Scope, Send

from api.deps import PoolDep, SettingsDep
from api.errors import not_found, responses
from api.live.hub import LiveClient, LiveEvent, LiveHubs, SiteHub
from api.params import SiteId
from api.queries import sites
from api.security import CallerDep

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/sites", tags=["live"], responses=responses(404, 422))

RETRY_MS: Final = 2000
"""What the stream tells a browser's EventSource to wait before it reconnects."""
STREAM: Final = "x-vitalab-stream"
"""OpenAPI extension marking an operation whose answer is an endless stream."""
EVENTS_DOC: Final = """\
`text/event-stream`, one JSON object per event:

* `snapshot` (first): `{"site_id", "at", "timezone", "today_start", "broker", "silent_after_s",
  "devices": [tile]}`;
* `device`: one tile that changed: `{"device_id", "kind", "in_use", "status": "online"|"offline"|"silent",
  "since", "training", "errors", "power_w", "speed_kmh", "cadence_rpm", "stroke_rate_spm", "hr_zone"}`
  (`hr_zone` 0..5 by %HRmax of whoever is checked in, no identity; values null while the device is free);
* `broker`: `{"broker": "connected"|"disconnected"|"connecting"|"none"}`.

Comments (`: ping`) keep the connection open. Every event has an id; a client that reconnects with
`Last-Event-ID` gets what it missed, or a fresh snapshot when that is no longer kept. A client that falls too
far behind is disconnected (it reconnects with `Last-Event-ID`)."""


class LiveResponse(EventSourceResponse):
    """The stream of one client; the client leaves its hub however the response ends (also when the body
    never starts, as for HEAD)."""

    def __init__(self, hubs: LiveHubs, hub: SiteHub, client: LiveClient, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self._leave = (hubs, hub, client)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        hubs, hub, client = self._leave
        try:
            await super().__call__(scope, receive, send)
        except SendTimeoutError:
            # a client that took nothing for send_timeout: dropped (the server closes its connection)
            log.warning("live view of %s: a client that took no data was disconnected", hub.site_id)
        finally:
            hubs.leave(hub, client)


def _sse(event: LiveEvent, *, retry: int | None = None) -> ServerSentEvent:
    return ServerSentEvent(event.data.decode(), event=event.kind, id=event.id, retry=retry)


async def _events(client: LiveClient, first: list[LiveEvent]) -> AsyncIterator[ServerSentEvent]:
    for i, event in enumerate(first):
        yield _sse(event, retry=RETRY_MS if i == 0 else None)
    if not first:
        yield ServerSentEvent(retry=RETRY_MS, comment="resumed: nothing missed")
    while True:
        nxt = await client.next()
        if nxt is None:  # dropped (too slow) or the hub closed
            return
        yield _sse(nxt)


def _ping() -> ServerSentEvent:
    return ServerSentEvent(comment="ping")


@router.get(
    "/{site_id}/live",
    response_class=EventSourceResponse,
    responses={
        200: {"description": EVENTS_DOC, "content": {"text/event-stream": {"schema": {"type": "string"}}}}
    },
    openapi_extra={STREAM: True},
)
async def live(
    request: Request, caller: CallerDep, pool: PoolDep, settings: SettingsDep, site_id: SiteId
) -> EventSourceResponse:
    """The live floor of a site: a snapshot of every device (in use or free, online, offline or silent, since
    when, power, speed or stroke rate, heart-rate zone), then each change within about a second of the
    device reporting it, followed on the broker (not the database). Send `Last-Event-ID` to resume."""
    # a connection only for the check: a stream must not hold one of the pool's connections
    async with pool.connection() as conn:
        tz = await sites.timezone(conn, site_id) if caller.can_site(site_id) else None
    if tz is None:
        raise not_found("site", site_id, field="path.site_id")
    hubs: LiveHubs = request.app.state.live
    hub, client, first = await hubs.join(site_id, request.headers.get("last-event-id"))
    return LiveResponse(
        hubs,
        hub,
        client,
        content=_events(client, first),
        ping=settings.live_ping_s,
        ping_message_factory=_ping,
        send_timeout=settings.live_send_timeout_s,
    )
