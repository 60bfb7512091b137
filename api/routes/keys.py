"""API keys, for admins: create (the key is shown once), list, read, revoke. The same functions back
``vitalab keys`` (:mod:`api.keys`)."""

from __future__ import annotations

from typing import Annotated, Final

from fastapi import APIRouter, Path, Query, Request, Response, status

from api import audit, keys, pagination
from api.deps import ConnDep, NowDep
from api.errors import invalid, not_found, responses
from api.guard import Guard
from api.models import KeyIn, KeyOut, NewKeyOut, RoleName
from api.pagination import CursorParam, PageLimit
from api.params import QUERY_LATEST
from api.queries import keys as key_rows
from api.security import CallerDep, Scope

router = APIRouter(prefix="/v1/keys", tags=["access"], responses=responses(401, 403, 404, 422))
KEY_ID: Final = r"^[0-9a-f]{16}$"
KeyId = Annotated[str, Path(pattern=KEY_ID, description="the key id (the part after `vl_`)")]


def _out(info: keys.KeyInfo) -> KeyOut:
    return KeyOut(
        key_id=info.key_id,
        name=info.name,
        owner=info.owner,
        role=info.role,
        scope=info.scope.entries(),
        created_at=info.created_at,
        expires_at=info.expires_at,
        last_used_at=info.last_used_at,
        revoked_at=info.revoked_at,
    )


@router.post("", response_model=NewKeyOut, status_code=status.HTTP_201_CREATED)
async def create_key(conn: ConnDep, now: NowDep, caller: CallerDep, body: KeyIn) -> NewKeyOut:
    """A new key; the answer holds the key itself (``key``), which is never shown again."""
    try:
        scope = Scope.parse(body.scope)
    except ValueError as exc:
        raise invalid("body.scope", str(exc)) from None
    if body.expires_at is not None and not now < body.expires_at < QUERY_LATEST:
        raise invalid("body.expires_at", f"expires_at must lie after now, before {QUERY_LATEST.date()}")
    async with conn.transaction():
        try:
            created = await keys.create_key(
                conn,
                name=body.name,
                owner=body.owner,
                role=body.role,
                scope=scope,
                now=now,
                expires_at=body.expires_at,
            )
        except ValueError as exc:
            field = "body.expires_at" if "expires_at" in str(exc) else "body.scope"
            raise invalid(field, str(exc)) from None
        await audit.record(conn, caller, "keys.create", created.info.key_id, "ok", now, caller.address)
    return NewKeyOut(**_out(created.info).model_dump(), key=created.token)


@router.get("", response_model=list[KeyOut], responses=pagination.PAGED)
async def list_keys(
    conn: ConnDep,
    now: NowDep,
    request: Request,
    response: Response,
    role: RoleName | None = None,
    owner: Annotated[str | None, Query(max_length=200)] = None,
    active: Annotated[bool, Query(description="only keys neither revoked nor expired")] = False,
    limit: PageLimit = 100,
    cursor: CursorParam = None,
) -> list[KeyOut]:
    """Keys by creation time (never their secrets)."""
    page = await keys.list_keys(
        conn,
        role=role,
        owner=owner,
        active_at=now if active else None,
        cursor=pagination.decode(cursor, key_rows.KEYSET),
        limit=limit,
    )
    pagination.link(request, response, page)
    return [_out(k) for k in page.rows]


@router.get("/{key_id}", response_model=KeyOut)
async def get_key(conn: ConnDep, key_id: KeyId) -> KeyOut:
    found = await keys.get_key(conn, key_id)
    if found is None:
        raise not_found("key", key_id, field="path.key_id")
    return _out(found)


@router.post("/{key_id}/revoke", response_model=KeyOut)
async def revoke_key(
    request: Request, conn: ConnDep, now: NowDep, caller: CallerDep, key_id: KeyId
) -> KeyOut:
    """Revoke a key: from now on it answers 401 (at once on this API process; other API processes may
    accept it for up to `VITALAB_API_KEY_CACHE_S` seconds more). Revoking again changes nothing."""
    async with conn.transaction():
        found = await keys.revoke_key(conn, key_id, now)
        if found is None:
            raise not_found("key", key_id, field="path.key_id")
        await audit.record(conn, caller, "keys.revoke", key_id, "ok", now, caller.address)
    guard: Guard = request.app.state.guard
    guard.key_cache.invalidate(key_id)
    return _out(found)
