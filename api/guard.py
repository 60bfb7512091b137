"""The guard: every route's first dependency (added to the whole app by :func:`api.main.create_app`), and
the audit trail around every request.

For the route a request was routed to, the policy entry (:mod:`api.policy`) says who may call it. The guard
authenticates the caller (an API key, :mod:`api.keys`, or a single-sign-on token, :mod:`api.oidc`), checks the
role and leaves the caller for the route (:data:`api.security.CallerDep`). It runs before the route's
parameters are validated and before the route takes a database connection. The resources a request names are
checked against the caller's scope by the very lookups that answer 404 for unknown ones
(:mod:`api.routes.lookup`), after the route's own validation: an out-of-scope resource and an unknown one get
the same answer, in every case. The guard's own answers:

* 401 (``WWW-Authenticate: Bearer``): no credential, or a wrong, unknown, expired or revoked one;
* 429 (``Retry-After``): too many failed authentications from the client's address (:mod:`api.throttle`);
* 403: a known caller whose role may not call the route (and anyone, on a route without a policy entry);
* 503: the database (or the identity provider's key set) is unavailable.

What the policy says to audit (writes, participant-level reads, refusals) is noted in the request's scope;
:class:`AuditTrail` records it with the answer's status before the answer leaves (and answers 503 instead when
the record cannot be written: nothing audited goes out unrecorded).

Credentials: ``Authorization: Bearer <key or token>`` or ``X-API-Key: <key>``.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final
from uuid import UUID

import psycopg
from fastapi import Request
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool, PoolTimeout
from pydantic import TypeAdapter
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api import audit, keys
from api.errors import Problem, response
from api.key_cache import KeyCache
from api.oidc import KeySetUnavailable, OidcVerifier
from api.policy import rule_for
from api.security import CALLER_KEY, Caller
from api.throttle import FailureThrottle
from vitalab.settings import Settings
from vitalab.wire.topics import ID_PATTERN

log = logging.getLogger(__name__)

NOTE_KEY: Final = "vitalab.audit"
"""Where the guard leaves what :class:`AuditTrail` is to record, in the ASGI scope."""
WRITE_METHODS: Final = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_UUID = TypeAdapter(UUID)
_INT = TypeAdapter(int)
_ID_RE = re.compile(ID_PATTERN)


@dataclass(frozen=True, slots=True)
class Note:
    """An audit record to write once the answer's status is known (``outcome`` None: that status)."""

    caller: Caller | None
    action: str
    resource: str
    now: datetime
    address: str | None
    key_id: str | None = None
    outcome: str | None = None


def _client(request: Request) -> str | None:
    return None if request.client is None else str(request.client.host)


def _credential(request: Request) -> str | None:
    """The presented key or token ("" for an Authorization header that is not a bearer credential)."""
    auth = request.headers.get("authorization")
    if auth is not None:
        scheme, _, value = auth.strip().partition(" ")
        return value.strip() if scheme.lower() == "bearer" else ""
    key = request.headers.get("x-api-key")
    return None if key is None else key.strip()


def _challenge(error: bool) -> dict[str, str]:
    return {"WWW-Authenticate": 'Bearer realm="vitalab"' + (', error="invalid_token"' if error else "")}


class Guard:
    """The guard's state: the failed-authentication throttle, the cache of verified keys and the
    single-sign-on verifier."""

    def __init__(self, settings: Settings, oidc: OidcVerifier | None = None) -> None:
        self.throttle = FailureThrottle(settings.auth_failures_max, settings.auth_failures_window_s)
        self.key_cache = KeyCache(settings.api_key_cache_s)
        self.oidc = oidc if oidc is not None else (OidcVerifier(settings) if settings.oidc_issuer else None)

    async def authenticate(
        self, conn: AsyncConnection, token: str | None, now: datetime, address: str | None
    ) -> Caller | tuple[Problem, str, str | None]:
        """The caller, or the refusal: its problem, its audit outcome and the key id claimed."""
        if token is None:
            problem = Problem(
                401, "this route needs a credential: `Authorization: Bearer <key>`", headers=_challenge(False)
            )
            return problem, "401 missing", None
        if token.startswith(keys.PREFIX):
            verified = await keys.verify(conn, token, now, address, self.key_cache)
            if isinstance(verified, Caller):
                return verified
            problem = Problem(
                401, "the API key is not valid (wrong, expired or revoked)", headers=_challenge(True)
            )
            return problem, f"401 {verified}", keys.claimed_key_id(token)
        if self.oidc is not None and token:
            try:
                checked = await self.oidc.verify(token, now, address)
            except KeySetUnavailable as exc:
                log.warning("the identity provider's key set is unavailable: %s", exc)
                raise Problem(
                    503, "the identity provider's key set is unavailable", headers={"Retry-After": "5"}
                ) from None
            if isinstance(checked, Caller):
                return checked
            if checked == "no role":
                return Problem(403, "the token grants no role of this API"), "403 no role", None
            problem = Problem(
                401,
                "the token is not valid (signature, issuer, audience or expiry)",
                headers=_challenge(True),
            )
            return problem, f"401 {checked}", None
        return Problem(401, "not a credential of this API", headers=_challenge(True)), "401 malformed", None


async def enforce(request: Request) -> None:
    """The policy, for the route this request was routed to (the first dependency of every route)."""
    route = request.scope.get("route")
    template = str(getattr(route, "path_format", None) or getattr(route, "path", ""))
    method = request.method
    rule = rule_for(method, template)
    if rule is not None and rule.public:
        return
    app = request.app
    guard: Guard = app.state.guard
    now: datetime = app.state.clock()
    address = _client(request)
    who = address or "unknown"
    action = f"{method} {template}"
    query = request.url.query
    resource = request.url.path + ("?" + query if query else "")
    wait = guard.throttle.retry_after(who, now)
    if wait is not None:
        raise Problem(
            429,
            f"too many failed authentications from {who}; retry in {wait} s",
            headers={"Retry-After": str(wait)},
        )
    pool: AsyncConnectionPool = app.state.security_pool
    token = _credential(request)
    # a key verified within the cache's time to live needs no connection (api/key_cache.py)
    outcome: Caller | tuple[Problem, str, str | None] | None = (
        guard.key_cache.get(token, now, address) if token and token.startswith(keys.PREFIX) else None
    )
    if outcome is None:
        async with pool.connection() as conn:
            outcome = await guard.authenticate(conn, token, now, address)
            if isinstance(outcome, Caller) and outcome.key_id is not None:
                # its use recorded when it is read, so at least once per cache time to live
                await keys.touch(conn, outcome.key_id, now)
    if not isinstance(outcome, Caller):
        problem, said, key_id = outcome
        if problem.status == 401:
            guard.throttle.failed(who, now)
        request.scope[NOTE_KEY] = Note(None, "authenticate", resource, now, address, key_id, said)
        raise problem
    caller = outcome
    request.scope[CALLER_KEY] = caller
    audited = rule is not None and (rule.personal or method in WRITE_METHODS)
    if rule is None or caller.role not in rule.roles:
        request.scope[NOTE_KEY] = Note(caller, action, resource, now, address)
        detail = (
            f"no access policy for {action}"
            if rule is None
            else f"the role {caller.role!r} may not call {action}"
        )
        raise Problem(403, detail)
    if audited:
        request.scope[NOTE_KEY] = Note(caller, action, resource, now, address)


class AuditTrail:
    """Records what the guard noted, with the answer's status, before the answer leaves."""

    def __init__(self, app: ASGIApp, pool: Any) -> None:
        """``pool()`` gives the autocommit pool of the guard (set once the app has started)."""
        self.app = app
        self.pool = pool

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        swallowed = False

        async def record(note: Note, status: int) -> bool:
            outcome = note.outcome or str(status)
            try:
                pool: AsyncConnectionPool = self.pool()
                async with pool.connection() as conn:
                    if note.caller is None:
                        await audit.record_refused(
                            conn,
                            key_id=note.key_id,
                            resource=note.resource,
                            outcome=outcome,
                            now=note.now,
                            address=note.address,
                        )
                    else:
                        await audit.record(
                            conn, note.caller, note.action, note.resource, outcome, note.now, note.address
                        )
            except (psycopg.Error, PoolTimeout) as exc:
                log.error("audit record of %s %s failed: %s", note.action, note.resource, exc)
                return False
            return True

        async def audited_send(message: Message) -> None:
            nonlocal swallowed
            if swallowed:
                return
            note = scope.get(NOTE_KEY)
            starting = message["type"] == "http.response.start"
            if starting and isinstance(note, Note) and not await record(note, int(message["status"])):
                swallowed = True
                problem = Problem(503, "the audit log is unavailable; try again shortly")
                await response(problem, {"Retry-After": "5"}, scope.get("path"))(scope, receive, send)
                return
            await send(message)

        try:
            await self.app(scope, receive, audited_send)
        except Exception:
            note = scope.get(NOTE_KEY)
            if isinstance(note, Note):
                await record(note, 500)
            raise
