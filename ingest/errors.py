"""Errors of the ingester."""

from __future__ import annotations

from vitalab.errors import VitalabError


class IngestError(VitalabError):
    """Base of the ingester's errors."""


class BrokerUnavailable(IngestError):
    def __init__(self, url: str, detail: str) -> None:
        super().__init__(f"cannot connect to MQTT broker {url}: {detail}")
        self.url = url
        self.detail = detail
