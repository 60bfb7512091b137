"""Studies, enrolment and consent: the rules.

Studies (admin):

* a study is created with at least one site (each must exist: 422 naming the unknown ones) and the scopes it
  asks for; its pseudonym key is generated with it, stored in ``study_keys`` and never returned;
* its status moves ``draft -> recruiting -> closed`` only (409 otherwise); scopes change and sites are
  removed only while it is a draft (participants agreed to what it asked); sites may be added later;
* a study is deleted only while it is a draft without enrolments or exports (409 otherwise).

Enrolment and consent (a kiosk or front desk at the participant's site; a desk sees the studies that take part
at its site, as if no other existed):

* enrolment needs a recruiting study, a participant registered at one of its sites, scopes the study asks
  for, and records the first consent; the same enrolment again (same version, scopes and time) answers with
  what is stored (a retried request), anything else is 409 (consent changes go to ``.../consents``);
* a consent change adds a record (the history is append-only: the table refuses UPDATE and DELETE): giving
  consent again (new text version or scopes) needs a recruiting study; a withdrawal is always possible; a
  record may not take effect before the participant's newest one (409), nor before 2000 or after now plus
  ``max_future_s`` (422).

Researchers see enrolments under pseudonyms only.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any
from uuid import UUID

from psycopg import AsyncConnection

from api.errors import Problem, conflict, invalid, not_found
from api.exports.pseudonyms import Pads, new_key, pads
from api.params import check_written
from api.queries import participants
from api.queries import studies as q
from api.research_models import (
    ConsentIn,
    ConsentOut,
    ConsentRecordOut,
    EnrolmentIn,
    StudyIn,
    StudyOut,
    StudyPatch,
)

_NEXT_STATUS = {
    "draft": {"draft", "recruiting"},
    "recruiting": {"recruiting", "closed"},
    "closed": {"closed"},
}


async def _require_sites(conn: AsyncConnection, sites: list[str], field: str) -> None:
    unknown = await q.missing_sites(conn, sites)
    if unknown:
        raise invalid(field, f"unknown site(s): {', '.join(unknown)}")


async def require_study(
    conn: AsyncConnection, study_id: str, *, lock: bool = False, at_sites: frozenset[str] | None = None
) -> StudyOut:
    """The study; 404 for an unknown one and, ``at_sites`` given (a desk's sites), for one that takes part
    at none of them: the same answer."""
    found = await q.get_study(conn, study_id, lock=lock)
    if found is None or (at_sites is not None and at_sites.isdisjoint(found.sites)):
        raise not_found("study", study_id, field="path.study_id")
    return found


async def create(conn: AsyncConnection, body: StudyIn, now: datetime) -> StudyOut:
    async with conn.transaction():
        await _require_sites(conn, body.sites, "body.sites")
        if not await q.insert_study(conn, body.model_dump(), new_key(), now):
            raise conflict(f"study {body.study_id!r} exists", field="body.study_id")
        return await require_study(conn, body.study_id)


async def update(conn: AsyncConnection, study_id: str, body: StudyPatch, now: datetime) -> StudyOut:
    changes: dict[str, Any] = body.model_dump(exclude_unset=True)
    for field in ("title", "description", "starts_on", "scopes", "status", "sites"):
        if field in changes and changes[field] is None:
            raise invalid(f"body.{field}", f"{field} cannot be removed")
    async with conn.transaction():
        study = await require_study(conn, study_id, lock=True)
        status = changes.get("status") or study.status
        if status not in _NEXT_STATUS[study.status]:
            raise conflict(f"a {study.status} study cannot become {status}", field="body.status")
        if "scopes" in changes and set(changes["scopes"]) != set(study.scopes) and study.status != "draft":
            raise conflict("scopes change only while the study is a draft", field="body.scopes")
        sites = changes.pop("sites", None)
        if sites is not None:
            await _require_sites(conn, sites, "body.sites")
            if set(study.sites) - set(sites) and study.status != "draft":
                raise conflict("sites are removed only while the study is a draft", field="body.sites")
        starts = changes.get("starts_on", study.starts_on)
        ends = changes.get("ends_on", study.ends_on)
        if starts is not None and ends is not None and ends < starts:
            raise invalid("body.ends_on", "ends_on must not be before starts_on")
        if changes:
            await q.update_study(conn, study_id, changes, now)
        if sites is not None:
            await q.set_sites(conn, study_id, sites)
        return await require_study(conn, study_id)


async def delete(conn: AsyncConnection, study_id: str) -> None:
    async with conn.transaction():
        study = await require_study(conn, study_id, lock=True)
        if study.status != "draft":
            raise conflict(
                f"study {study_id!r} is {study.status}: only a draft is deleted (close it instead)"
            )
        if await q.has_enrolments(conn, study_id) or await q.has_exports(conn, study_id):
            raise conflict(f"study {study_id!r} has enrolments or exports")
        await q.delete_study(conn, study_id)


async def _check_scopes(study: StudyOut, scopes: Sequence[str], field: str) -> None:
    extra = sorted(set(scopes) - set(study.scopes))
    if extra:
        raise invalid(field, f"study {study.study_id!r} does not ask for {', '.join(extra)}")


async def _participant_site(
    conn: AsyncConnection, participant_id: UUID, allowed_sites: frozenset[str] | None, field: str
) -> str:
    """The participant's site; 404 for an unknown participant or one outside the caller's sites."""
    site = await participants.site_of(conn, participant_id)
    if site is None or (allowed_sites is not None and site not in allowed_sites):
        raise Problem(404, f"no participant {participant_id}", field=field)
    return site


async def enrol(
    conn: AsyncConnection,
    study_id: str,
    body: EnrolmentIn,
    by: str,
    now: datetime,
    max_future_s: float,
    *,
    allowed_sites: frozenset[str] | None = None,
) -> tuple[ConsentOut, bool]:
    """Enrol with a first consent; ``(record, created)``. ``allowed_sites``: the caller's sites (None:
    all): the study must take part at one of them and the participant be registered at one of them (404
    otherwise, as for unknown ones)."""
    given = check_written(body.given_at or now, "body.given_at", now, max_future_s)
    async with conn.transaction():
        study = await require_study(conn, study_id, lock=True, at_sites=allowed_sites)
        site = await _participant_site(conn, body.participant_id, allowed_sites, "body.participant_id")
        if site not in study.sites:
            raise invalid(
                "body.participant_id",
                f"participant {body.participant_id} is registered at site {site!r}, "
                f"not at a site of study {study_id!r}",
            )
        await _check_scopes(study, body.scopes, "body.scopes")
        if await q.lock_enrolment(conn, study_id, body.participant_id):
            history = await q.consents(conn, study_id, body.participant_id)
            first = history[0] if history else None
            if (
                first is not None
                and len(history) == 1
                and first.consent_version == body.consent_version
                and sorted(first.scopes) == sorted(body.scopes)
                and first.given_at == given
            ):
                return first, False
            raise conflict(
                f"participant {body.participant_id} is enrolled in {study_id!r}; record consent changes at "
                f"/v1/studies/{study_id}/enrolments/{body.participant_id}/consents"
            )
        if study.status != "recruiting":
            raise conflict(f"study {study_id!r} is {study.status}, not recruiting")
        await q.insert_enrolment(conn, study_id, body.participant_id, given, by)
        record = await q.insert_consent(
            conn,
            study_id,
            body.participant_id,
            consent_version=body.consent_version,
            scopes=body.scopes,
            given_at=given,
            withdrawn_at=None,
            recorded_at=now,
            recorded_by=by,
        )
        return record, True


async def change_consent(
    conn: AsyncConnection,
    study_id: str,
    participant_id: UUID,
    body: ConsentIn,
    by: str,
    now: datetime,
    max_future_s: float,
    *,
    allowed_sites: frozenset[str] | None = None,
) -> tuple[ConsentOut, bool]:
    """Add a consent record (a new consent or a withdrawal); ``(record, created)``. ``allowed_sites`` as for
    :func:`enrol`."""
    at = check_written(body.at or now, "body.at", now, max_future_s)
    async with conn.transaction():
        study = await require_study(conn, study_id, at_sites=allowed_sites)
        await _participant_site(conn, participant_id, allowed_sites, "path.participant_id")
        if not await q.lock_enrolment(conn, study_id, participant_id):
            raise not_found("enrolment of participant", str(participant_id), field="path.participant_id")
        history = await q.consents(conn, study_id, participant_id)
        newest = history[-1] if history else None
        if newest is not None:
            newest_at = newest.given_at or newest.withdrawn_at
            assert newest_at is not None
            if at < newest_at:
                raise conflict(
                    f"the newest consent record takes effect at {newest_at.isoformat()}; a change cannot "
                    "take effect before it",
                    field="body.at",
                )
        if body.action == "give":
            assert body.scopes is not None
            if study.status != "recruiting":
                raise conflict(f"study {study_id!r} is {study.status}: consent is given while it recruits")
            await _check_scopes(study, body.scopes, "body.scopes")
            given = await q.insert_consent(
                conn,
                study_id,
                participant_id,
                consent_version=body.consent_version,
                scopes=body.scopes,
                given_at=at,
                withdrawn_at=None,
                recorded_at=now,
                recorded_by=by,
            )
            return given, True
        if newest is not None and newest.withdrawn_at is not None:
            return newest, False  # withdrawn already: nothing to add
        withdrawal = await q.insert_consent(
            conn,
            study_id,
            participant_id,
            consent_version=None,
            scopes=[],
            given_at=None,
            withdrawn_at=at,
            recorded_at=now,
            recorded_by=by,
        )
        return withdrawal, True


async def study_pads(conn: AsyncConnection, study_id: str) -> Pads:
    key = await q.key_of(conn, study_id)
    if key is None:
        raise Problem(409, f"study {study_id!r} has no pseudonym key")
    return pads(key)


async def history(conn: AsyncConnection, study_id: str, pseudonym: str) -> list[ConsentRecordOut]:
    """A participant's consent history, found by pseudonym."""
    await require_study(conn, study_id)
    p = await study_pads(conn, study_id)
    participant = await q.participant_of(conn, study_id, p, pseudonym)
    if participant is None:
        raise not_found("enrolment with pseudonym", pseudonym, field="path.pseudonym")
    return await q.consent_records(conn, study_id, participant)
