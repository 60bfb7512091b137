"""One rule for every error the API answers: RFC 9457 problem details (``application/problem+json``).

Every 4xx/5xx body has ``type`` (a tag URI per kind of problem), ``title`` (the same for every problem of
that type), ``status``, ``detail`` (this occurrence, in words) and, where one input is at fault, ``field``
(``query.since``, ``path.device_id``, ``body.started_at``; ``errors`` lists every offending field with its
message when there are several). Handlers raise :class:`Problem` (or its helpers :func:`not_found`,
:func:`invalid`, :func:`conflict`); FastAPI's validation errors and Starlette's HTTP errors (unknown route,
wrong method) are answered in the same shape, and an unexpected exception becomes a logged 500 problem
without internals in the body.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any, Final

import psycopg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from psycopg_pool import PoolTimeout
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)

MEDIA_TYPE: Final = "application/problem+json"
_TYPE_BASE: Final = "tag:vitalab.dev,2026:problem/"
# slug and title per status; the type URI is _TYPE_BASE + slug (tag URIs: stable, never dereferenced)
_KINDS: Final[dict[int, tuple[str, str]]] = {
    400: ("bad-request", "Bad request"),
    401: ("unauthenticated", "Authentication needed"),
    403: ("forbidden", "Not allowed"),
    404: ("not-found", "Not found"),
    405: ("method-not-allowed", "Method not allowed"),
    409: ("conflict", "Conflict with stored data"),
    413: ("too-large", "Request too large"),
    422: ("invalid-input", "Invalid input"),
    429: ("too-many-requests", "Too many requests"),
    500: ("internal", "Internal error"),
    503: ("unavailable", "Service unavailable"),
}


def problem_type(status: int) -> str:
    return _TYPE_BASE + _KINDS.get(status, ("http-" + str(status), ""))[0]


def _title(status: int) -> str:
    return _KINDS.get(status, ("", f"HTTP {status}"))[1]


class FieldError(BaseModel):
    field: str
    message: str


class ProblemDetails(BaseModel):
    """RFC 9457 problem details, with the offending input named in ``field`` (and ``errors``)."""

    model_config = ConfigDict(json_schema_extra={"description": "RFC 9457 problem details"})

    type: str = Field(description="a tag URI naming the kind of problem")
    title: str
    status: int
    detail: str
    instance: str | None = Field(default=None, description="this occurrence: the path of the request")
    field: str | None = Field(default=None, description="the offending input: `query.since`, `body.x`, ...")
    errors: list[FieldError] | None = Field(default=None, description="every offending input, when one is")


class Problem(Exception):
    """An error answer: raise it from a handler, service or dependency."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        field: str | None = None,
        errors: Sequence[FieldError] = (),
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.field = field
        self.errors = list(errors)
        self.headers = dict(headers) if headers else None

    def body(self, instance: str | None = None) -> ProblemDetails:
        return ProblemDetails(
            type=problem_type(self.status),
            title=_title(self.status),
            status=self.status,
            detail=self.detail,
            instance=instance,
            field=self.field,
            errors=self.errors or None,
        )


def not_found(what: str, value: object, *, field: str | None = None) -> Problem:
    return Problem(404, f"no {what} {value!r}", field=field)


def invalid(field: str, detail: str) -> Problem:
    return Problem(422, detail, field=field, errors=[FieldError(field=field, message=detail)])


def conflict(detail: str, *, field: str | None = None) -> Problem:
    return Problem(409, detail, field=field)


def response(
    problem: Problem, headers: Mapping[str, str] | None = None, instance: str | None = None
) -> JSONResponse:
    """The problem as an answer; ``instance`` is the request's path (RFC 9457 ``instance``)."""
    return JSONResponse(
        problem.body(instance).model_dump(mode="json", exclude_none=True),
        status_code=problem.status,
        media_type=MEDIA_TYPE,
        headers=headers,
    )


def _loc(loc: Sequence[int | str]) -> str:
    return ".".join(str(part) for part in loc)


def _message(error: dict[str, Any]) -> str:
    msg = str(error.get("msg", "invalid"))
    ctx = error.get("ctx") or {}
    # pydantic's "Value error, ..." prefix says nothing to a client
    return msg.removeprefix("Value error, ") if not ctx.get("error") else str(ctx["error"])


async def _on_problem(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, Problem)
    return response(exc, exc.headers, instance=request.url.path)


async def _on_validation(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = [FieldError(field=_loc(e.get("loc", ())), message=_message(e)) for e in exc.errors()]
    first = errors[0] if errors else FieldError(field="request", message="invalid request")
    detail = f"{first.field}: {first.message}"
    if len(errors) > 1:
        detail += f" (and {len(errors) - 1} more)"
    return response(Problem(422, detail, field=first.field, errors=errors), instance=request.url.path)


async def _on_http(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    detail = exc.detail if isinstance(exc.detail, str) else _title(exc.status_code)
    if exc.status_code == 400:  # a body that cannot be parsed (e.g. not UTF-8): bad input like any other
        return response(invalid("body", detail), instance=request.url.path)
    return response(Problem(exc.status_code, detail), headers=exc.headers, instance=request.url.path)


async def _on_unavailable(request: Request, exc: Exception) -> JSONResponse:
    """The database is down or every connection is busy for longer than the pool's timeout: 503, quickly."""
    log.warning("database unavailable on %s %s: %s", request.method, request.url.path, exc)
    problem = Problem(503, "the database is unavailable; try again shortly")
    return response(problem, headers={"Retry-After": "5"}, instance=request.url.path)


async def _on_unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return response(Problem(500, "internal error; the server log has the details"), instance=request.url.path)


def install(app: FastAPI) -> None:
    """Answer every error of ``app`` as problem details."""
    app.add_exception_handler(Problem, _on_problem)
    app.add_exception_handler(RequestValidationError, _on_validation)
    app.add_exception_handler(StarletteHTTPException, _on_http)
    app.add_exception_handler(psycopg.OperationalError, _on_unavailable)
    app.add_exception_handler(PoolTimeout, _on_unavailable)
    app.add_exception_handler(Exception, _on_unexpected)


def responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries: these statuses answer problem details."""
    descriptions = {
        401: "no credential, or a wrong, expired or revoked one (`WWW-Authenticate: Bearer`)",
        403: "the caller's role may not call this",
        429: "too many failed authentications from this address (`Retry-After`)",
        404: "unknown resource (device, site, participant, session)",
        409: "conflicts with stored data",
        422: "invalid input (the field is named in `field`)",
        503: "the database is unavailable",
    }
    return {
        s: {
            "model": ProblemDetails,
            "description": descriptions.get(s, _title(s)),
            "content": {MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/ProblemDetails"}}},
        }
        for s in statuses
    }
