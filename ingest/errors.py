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


class PublishFailed(IngestError):
    """The bus did not confirm messages the ingester published (its commit acknowledgements)."""

    def __init__(self, detail: str) -> None:
        super().__init__(f"publishing failed: {detail}")
        self.detail = detail


class SiteConflict(IngestError):
    """A batch bound devices to sites (``Batch.claims``) that the database has at other sites (another
    ingester bound them first): the batch's transaction is rolled back and its messages are routed again
    with ``sites``, the devices' sites as stored."""

    def __init__(self, sites: dict[str, str]) -> None:
        super().__init__(f"devices bound to other sites meanwhile: {sorted(sites)}")
        self.sites = sites
