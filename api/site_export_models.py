"""Request and response models of the site exports (gym operators: a site's aggregates as files)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from api.exports.site import SiteDataset, SiteFormat
from api.params import QueryDay
from api.research_models import ExportJobOut, unique
from api.services.sites import Breakdown


class SiteExportIn(BaseModel):
    """An export of a site's aggregates over ``[since, until]``, in the site's local days."""

    model_config = ConfigDict(extra="forbid")

    datasets: Annotated[list[SiteDataset], AfterValidator(unique)] = Field(
        min_length=1, description="utilisation, occupancy, vitality"
    )
    format: SiteFormat
    since: QueryDay = Field(description="first local day (inclusive)")
    until: QueryDay = Field(description="last local day (inclusive)")
    gzip: bool = Field(default=False, description="gzip the csv files")
    slot_min: int = Field(default=15, ge=5, le=60, description="occupancy slot: 5, 10, 15, 20, 30 or 60")
    breakdown: Breakdown = Field(default="none", description="vitality groups: none, sex, age_band")
    k: int | None = Field(
        default=None,
        ge=2,
        le=1_000_000,
        description="vitality suppression threshold (never below the configured minimum)",
    )


class SiteExportOut(ExportJobOut):
    site_id: str
    data_as_of: datetime | None
    """When the data was read (the attempt that succeeded)."""
