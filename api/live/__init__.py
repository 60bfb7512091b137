"""The live floor: what every device of a site is doing now, followed on the broker and streamed to the
dashboard as Server-Sent Events (``GET /v1/sites/{site_id}/live``, :mod:`api.routes.live`).

* :mod:`api.live.floor`: the pure fold of the broker's messages into tiles (use, online/offline/silent,
  values, heart-rate zone);
* :mod:`api.live.hub`: one hub per watched site (one broker subscription, fan-out to bounded client
  queues, a ring buffer for ``Last-Event-ID``, the silence timer);
* :mod:`api.live.source`: what the hubs read from the database (the first snapshot, the check-ins, the site's
  opening hours and timezone).
"""

from __future__ import annotations

from datetime import timedelta

from api.live.floor import FloorConfig
from api.live.hub import HubConfig
from vitalab.settings import Settings
from vitalab.wire import WireLimits


def hub_config(settings: Settings) -> HubConfig:
    """The hubs' configuration from the settings (``VITALAB_LIVE_*``; a site's opening hours are the site's
    own, ``sites.opening_hours``)."""
    floor = FloorConfig(
        silent_after_s=settings.live_silent_after_s,
        idle_silent_after_s=settings.live_idle_silent_after_s,
        limits=WireLimits(
            max_payload_bytes=settings.max_payload_bytes,
            max_future=timedelta(seconds=settings.max_future_s),
            max_past=timedelta(seconds=settings.max_past_s),
        ),
    )
    return HubConfig(
        floor=floor,
        client_queue=settings.live_client_queue,
        replay_events=settings.live_replay_events,
        tick_s=settings.live_tick_s,
        profile_refresh_s=settings.live_profile_refresh_s,
        protocol=settings.mqtt_protocol,
        ca_file=None if settings.mqtt_ca_file is None else str(settings.mqtt_ca_file),
    )
