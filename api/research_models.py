"""Request and response models of the research API: studies, enrolments and consent, export jobs."""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from api.exports.datasets import DatasetName, Scope
from api.exports.engine import Format
from api.exports.pseudonyms import PSEUDONYM_PATTERN
from api.params import QueryDay, QueryTime
from vitalab.wire.topics import ID_PATTERN

StudyStatus = Literal["draft", "recruiting", "closed"]
SiteRef = Annotated[str, Field(pattern=ID_PATTERN)]
_NO_NUL = r"^[^\x00]*$"
Text = Annotated[str, Field(min_length=1, max_length=200, pattern=_NO_NUL)]
Pseudonym = Annotated[str, Field(pattern=PSEUDONYM_PATTERN, description="a pseudonym in this study")]


def unique(values: list[Any]) -> list[Any]:
    """Validator: a list without repeats (422 otherwise)."""
    if len(set(values)) != len(values):
        raise ValueError("values must not repeat")
    return values


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StudyIn(_In):
    """A new study. Its pseudonym key is generated with it and never returned."""

    study_id: str = Field(pattern=ID_PATTERN, description="a short id, e.g. hiit-2027")
    title: Text
    description: str = Field(default="", max_length=10_000, pattern=_NO_NUL)
    principal_investigator: Text | None = None
    ethics_ref: Text | None = Field(default=None, description="the ethics committee's approval reference")
    starts_on: QueryDay
    ends_on: QueryDay | None = None
    sites: Annotated[list[SiteRef], AfterValidator(unique)] = Field(min_length=1, max_length=100)
    scopes: Annotated[list[Scope], AfterValidator(unique)] = Field(
        min_length=1,
        description="data the study asks participants for: derived_metrics (sessions, daily), raw_samples, "
        "rr_intervals, pooled_analyses, full_profile (birth year, weight, HR limits instead of an age band)",
    )
    status: StudyStatus = "draft"

    @model_validator(mode="after")
    def _dates(self) -> StudyIn:
        if self.ends_on is not None and self.ends_on < self.starts_on:
            raise ValueError("ends_on must not be before starts_on")
        return self


class StudyPatch(_In):
    """Changes to a study. Scopes and the removal of sites only while it is a draft; status moves
    draft -> recruiting -> closed."""

    title: Text | None = None
    description: str | None = Field(default=None, max_length=10_000, pattern=_NO_NUL)
    principal_investigator: Text | None = None
    ethics_ref: Text | None = None
    starts_on: QueryDay | None = None
    ends_on: QueryDay | None = None
    sites: Annotated[list[SiteRef], AfterValidator(unique)] | None = Field(
        default=None, min_length=1, max_length=100
    )
    scopes: Annotated[list[Scope], AfterValidator(unique)] | None = Field(default=None, min_length=1)
    status: StudyStatus | None = None


class StudyOut(BaseModel):
    study_id: str
    title: str
    description: str
    principal_investigator: str | None
    ethics_ref: str | None
    starts_on: date | None
    ends_on: date | None
    sites: list[str]
    scopes: list[str]
    status: str
    created_at: datetime
    updated_at: datetime | None


class EnrolmentIn(_In):
    """Enrol a participant with their first consent (a kiosk or front desk at the participant's site)."""

    participant_id: UUID
    consent_version: Text = Field(description="version of the consent text the participant agreed to")
    scopes: Annotated[list[Scope], AfterValidator(unique)] = Field(min_length=1)
    given_at: AwareDatetime | None = Field(default=None, description="default: now")


class ConsentIn(_In):
    """A change of consent: a new consent (other text version or scopes) or a withdrawal. The history is
    append-only: this adds a record, taking effect at ``at`` (default now; not before the newest record)."""

    action: Literal["give", "withdraw"]
    consent_version: Text | None = Field(default=None, description="required to give consent")
    scopes: Annotated[list[Scope], AfterValidator(unique)] | None = Field(
        default=None, min_length=1, description="required to give consent"
    )
    at: AwareDatetime | None = None

    @model_validator(mode="after")
    def _complete(self) -> ConsentIn:
        if self.action == "give" and (self.consent_version is None or self.scopes is None):
            raise ValueError("giving consent needs consent_version and scopes")
        if self.action == "withdraw" and (self.consent_version is not None or self.scopes is not None):
            raise ValueError("a withdrawal has no consent_version or scopes")
        return self


class ConsentOut(BaseModel):
    """A consent record as the site sees it (internal participant id)."""

    id: int
    study_id: str
    participant_id: UUID
    consent_version: str | None
    scopes: list[str]
    given_at: datetime | None
    withdrawn_at: datetime | None
    recorded_at: datetime
    recorded_by: str


class EnrolmentOut(BaseModel):
    """An enrolment as a researcher sees it: under the study's pseudonym only."""

    pseudonym: str
    enrolled_at: datetime
    consenting: bool
    """False once the newest consent record is a withdrawal."""
    consent_version: str | None
    scopes: list[str]
    since: datetime
    """When the newest consent record took effect."""


class ConsentRecordOut(BaseModel):
    """A consent record as a researcher sees it."""

    consent_version: str | None
    scopes: list[str]
    given_at: datetime | None
    withdrawn_at: datetime | None
    recorded_at: datetime


class ExportIn(_In):
    """An export of the study's consented data."""

    datasets: Annotated[list[DatasetName], AfterValidator(unique)] = Field(
        min_length=1,
        description="sessions, samples, rr, daily, participants (fhir-r4: sessions, samples, daily; "
        "omh: sessions, samples, rr)",
    )
    format: Format
    since: QueryTime | None = Field(default=None, description="from this time (inclusive)")
    until: QueryTime | None = Field(default=None, description="up to this time (exclusive)")
    pseudonyms: Annotated[list[Pseudonym], AfterValidator(unique)] | None = Field(
        default=None, min_length=1, max_length=100_000, description="only these participants"
    )
    gzip: bool = Field(default=False, description="gzip the csv / ndjson files")


class ExportFile(BaseModel):
    name: str
    dataset: str | None
    media_type: str
    rows: int | None
    bytes: int
    sha256: str
    url: str


class ExportJobOut(BaseModel):
    """What the status of an export job (a study's or a site's) holds."""

    export_id: UUID
    status: Literal["queued", "running", "succeeded", "failed"]
    requested_by: str
    requested_at: datetime
    parameters: dict[str, Any]
    attempts: int
    started_at: datetime | None
    finished_at: datetime | None
    progress_step: str | None
    rows_done: int
    rows_total: int | None
    progress: float | None
    """rows_done / rows_total (0..1) while running; 1 once succeeded."""
    error: str | None
    files: list[ExportFile]


class ExportOut(ExportJobOut):
    study_id: str
    consent_snapshot: datetime | None


class ErasedExport(BaseModel):
    """An earlier export whose files hold data of the erased participant (under the study's pseudonym): the
    files are not touched by the erasure; whoever holds them is to be told."""

    export_id: UUID
    study_id: str
    requested_by: str
    requested_at: datetime
    status: str
    finished_at: datetime | None


class ErasureReport(BaseModel):
    """What an erasure removed (rows per table), and the earlier exports that contained the participant."""

    participant_id: UUID
    erased_at: datetime
    erased_by: str
    rows: dict[str, int]
    """Rows removed, per table."""
    personal_devices: list[str]
    """The participant's own devices (straps) whose data inside their assignment windows was removed."""
    exports: list[ErasedExport]
    aggregates_refreshed: list[str] = []
    """TimescaleDB's continuous aggregates re-materialised over the personal devices' windows (empty on plain
    PostgreSQL, where the rollups are views)."""
    aggregates_pending: str | None = None
    """Set when that refresh failed after the erasure was committed: the error, and that the aggregates still
    hold per-minute figures of the erased windows until ``refresh_continuous_aggregate`` is run over them."""
