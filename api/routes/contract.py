"""The integrator kit: validate a message exactly as the ingester would judge it, the wire contract's JSON
Schema and AsyncAPI documents, and a device's dead letters.

``POST /v1/contract/validate`` takes a topic and a payload and answers (200) the ingester's verdict: the
sample rows it would store, the decoded meta/state/status record, and every dead letter it would write with
its ``reason``, ``detail`` and JSON ``path``; the outcome is ``stored``, ``partly_stored``, ``dead_letter``,
``ignored`` (an empty retained gateway status: a clear) or ``not_received`` (no ingester subscribes to the
topic: ``raw`` frames, which a gateway decodes, and topics outside the tree). Same decoder, same limits
(``VITALAB_MAX_PAYLOAD_BYTES``, ``VITALAB_MAX_FUTURE_S``, ``VITALAB_MAX_PAST_S``), same unknown-device
policy; "now" for the timestamp window is the server's clock. Only a request that does not say what to
judge is refused (422).
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
from typing import Annotated, Any, Final, Literal

import msgspec
from fastapi import APIRouter, Query, Request, Response
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, JsonValue

from api import pagination
from api.deps import ConnDep, NowDep, PoolDep, SettingsDep
from api.errors import invalid, not_found, responses
from api.models import DeadLetterOut, SampleOut
from api.pagination import CursorParam, PageLimit
from api.params import DeviceId, Since
from api.queries import dead_letters
from api.routes.lookup import require_letters_device
from api.security import CallerDep
from api.services import contract as service
from ingest.verdict import Outcome, Verdict
from vitalab.wire.errors import WireError
from vitalab.wire.schema import asyncapi, json_schemas
from vitalab.wire.topics import parse_topic

MAX_PAYLOAD_CHARS: Final = 4 * 1024 * 1024
"""What a validation request may carry (the ingester's own limit is a setting, 256 KiB by default)."""
MAX_TOPIC_BYTES: Final = 65_535

router = APIRouter(tags=["integrators"], responses=responses(422))


def _mqtt_topic(topic: str) -> str:
    if "\x00" in topic:
        raise ValueError("an MQTT topic has no NUL character")
    try:
        size = len(topic.encode("utf-8"))
    except UnicodeEncodeError:
        raise ValueError("an MQTT topic is UTF-8 text (no lone surrogates)") from None
    if size > MAX_TOPIC_BYTES:
        raise ValueError(f"an MQTT topic has at most {MAX_TOPIC_BYTES} bytes")
    return topic


class ValidateIn(BaseModel):
    """A message to judge: its topic and its payload, given in exactly one of three ways."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "topic": "vitalab/v1/gym-a/dev/bike-07/telemetry",
                    "payload": {
                        "v": 1,
                        "device": "bike-07",
                        "seq": 1234,
                        "samples": [{"t": "2026-11-25T10:00:00.000Z", "power_w": 182, "hr_bpm": 141}],
                    },
                }
            ]
        },
    )

    topic: Annotated[str, AfterValidator(_mqtt_topic)] = Field(
        min_length=1, description="the MQTT topic the message is published on"
    )
    payload: JsonValue = Field(
        default=None,
        description="the payload as a JSON value, for convenience: it is judged as its compact JSON encoding "
        "(UTF-8, no spaces), so size, number syntax and duplicate keys are those of that encoding; "
        "use `payload_text` or `payload_base64` to judge the exact bytes a device sends",
    )
    payload_text: str | None = Field(
        default=None,
        max_length=MAX_PAYLOAD_CHARS,
        description="the payload's exact text: its UTF-8 bytes are judged",
    )
    payload_base64: str | None = Field(
        default=None,
        max_length=MAX_PAYLOAD_CHARS * 4 // 3 + 4,
        description="the payload's exact bytes, base64 (RFC 4648, standard alphabet, padded)",
    )


class ValidSample(SampleOut):
    """A sample row the ingester would store (``received_at``: the server's now)."""

    rr_ms: list[float] | None = None


class ContractError(BaseModel):
    """One dead letter the ingester would write: a whole message, or one sample of it."""

    reason: str
    """Stable code: bad_topic, too_large, malformed, unsupported_version, schema, implausible_value,
    timestamp_out_of_range, device_mismatch, unknown_device, site_mismatch, unexpected_topic."""
    detail: str
    path: str | None
    """JSON path of the offending field (``$.samples[3].hr_bpm``), when one is at fault."""
    device_id: str | None
    payload_size: int
    payload_preview: str
    """What the dead letter would hold (the message, or the one rejected sample), as text."""


class Validation(BaseModel):
    topic: str
    outcome: Outcome
    """stored; partly_stored (some samples stored, the others dead-lettered); dead_letter; ignored (nothing
    written, nothing refused); not_received (no ingester subscribes to the topic)."""
    kind: Literal["telemetry", "state", "meta", "raw", "status"] | None
    site_id: str | None
    source_id: str | None
    """The device (the gateway for ``status`` topics) the topic names."""
    seq: int | None
    samples: list[ValidSample]
    record: dict[str, Any] | None
    """The decoded meta, state, gateway status, or raw frame."""
    errors: list[ContractError]
    note: str | None


def _payload(body: ValidateIn) -> bytes:
    given = [name for name in ("payload", "payload_text", "payload_base64") if name in body.model_fields_set]
    if len(given) != 1:
        field = f"body.{given[1]}" if len(given) > 1 else "body.payload"
        raise invalid(field, "give the payload exactly once: payload, payload_text or payload_base64")
    try:
        if body.payload_base64 is not None:
            return base64.b64decode(body.payload_base64, validate=True)
        if body.payload_text is not None:
            return body.payload_text.encode("utf-8")
        if given == ["payload"]:
            return json.dumps(
                body.payload, separators=(",", ":"), ensure_ascii=False, allow_nan=False
            ).encode("utf-8")
    except binascii.Error as exc:
        raise invalid("body.payload_base64", f"not base64: {exc}") from None
    except UnicodeEncodeError:
        raise invalid(
            f"body.{given[0]}", "not encodable as UTF-8; send the bytes as payload_base64"
        ) from None
    except ValueError:  # NaN or Infinity, which JSON has no literal for
        raise invalid("body.payload", "NaN and Infinity have no JSON encoding; send payload_text") from None
    raise invalid(f"body.{given[0]}", f"{given[0]} may not be null")


def _shape(verdict: Verdict) -> Validation:
    parsed = verdict.parsed
    return Validation(
        topic=verdict.topic,
        outcome=verdict.outcome,
        kind=parsed.kind.value if parsed else None,
        site_id=parsed.site if parsed else None,
        source_id=parsed.source if parsed else None,
        seq=verdict.seq,
        samples=[ValidSample(**row) for row in verdict.rows],
        record=msgspec.to_builtins(verdict.record) if verdict.record is not None else None,
        errors=[
            ContractError(
                reason=d.reason,
                detail=d.detail,
                path=d.path,
                device_id=d.device_id,
                payload_size=d.payload_size,
                payload_preview=d.payload.decode("utf-8", errors="replace"),
            )
            for d in verdict.dead
        ],
        note=verdict.note,
    )


@router.post("/v1/contract/validate", response_model=Validation)
async def validate_message(
    body: ValidateIn, pool: PoolDep, settings: SettingsDep, now: NowDep, caller: CallerDep
) -> Validation:
    """What the ingester would do with this message, received now: the samples it would store, the record
    it would keep, and each dead letter with its reason and JSON path. A refused message is a 200 answer
    too; 422 only when the request does not say what to judge. A topic of a site outside the caller's scope
    answers 404 (a topic outside the contract's tree names no site and is judged)."""
    try:
        site = parse_topic(body.topic).site
    except WireError:
        site = None
    if site is not None and not caller.can_site(site):
        raise not_found("site", site, field="body.topic")
    payload = _payload(body)
    return _shape(await service.validate(pool, settings, body.topic, payload, now))


@functools.cache
def _schema() -> dict[str, Any]:
    return json_schemas()


@functools.cache
def _asyncapi() -> dict[str, Any]:
    return asyncapi()


@router.get("/v1/contract/schema", response_model=dict[str, Any])
async def payload_schema() -> dict[str, Any]:
    """JSON Schema (2020-12) of every wire payload: what `vitalab schema` writes to
    docs/payloads.schema.json, made by the same code."""
    return _schema()


@router.get("/v1/contract/asyncapi", response_model=dict[str, Any])
async def asyncapi_document() -> dict[str, Any]:
    """AsyncAPI 3.0 description of the MQTT topic tree: what `vitalab schema` writes to docs/asyncapi.json,
    made by the same code."""
    return _asyncapi()


@router.get(
    "/v1/devices/{device_id}/dead-letters",
    response_model=list[DeadLetterOut],
    responses={**pagination.PAGED, **responses(404)},
)
async def device_dead_letters(
    conn: ConnDep,
    caller: CallerDep,
    request: Request,
    response: Response,
    device_id: DeviceId,
    reason: Annotated[str | None, Query(max_length=64, description="e.g. schema, implausible_value")] = None,
    since: Since = None,
    limit: PageLimit = 100,
    cursor: CursorParam = None,
) -> list[DeadLetterOut]:
    """What the ingester refused of this device, newest first, with the reason and the offending field
    (from ``since`` on, if given). Messages whose topic names no valid device are not listed here (see
    /v1/dead-letters)."""
    await require_letters_device(conn, device_id, "path.device_id", caller)
    page = await dead_letters.device_dead_letters(
        conn, device_id, reason, since, pagination.decode(cursor, dead_letters.KEYSET), limit
    )
    pagination.link(request, response, page)
    return [
        DeadLetterOut(
            id=r.id,
            received_at=r.received_at,
            topic=r.topic,
            reason=r.reason,
            detail=r.detail,
            path=r.path,
            device_id=r.device_id,
            payload_size=r.payload_size,
            payload_preview=bytes(r.payload).decode("utf-8", errors="replace"),
        )
        for r in page.rows
    ]
