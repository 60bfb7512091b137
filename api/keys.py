"""API keys as a library: create, list, revoke and verify, without HTTP (the admin routes, ``vitalab keys``
and ``vitalab up`` all call these).

A key reads ``vl_<key id>_<secret>``: the key id (16 hex digits) names the row, the secret is 256 random
bits (``secrets.token_urlsafe(32)``) shown once at creation. Only SHA-256 of ``<key id>:<secret>`` is stored:
the secret is random and long, so no salt or slow hash is needed (nothing to guess from the hash), and a
verification costs one indexed read and one hash, compared in constant time (``hmac.compare_digest``).

A key has a name, an owner, a role and a scope (:class:`api.security.Scope`), an optional expiry; its last
use is recorded (at most once a minute per key) and it can be revoked, which takes effect at once in the
process that revokes it and within ``VITALAB_API_KEY_CACHE_S`` everywhere else (:mod:`api.key_cache`).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Final, Literal, cast

from psycopg import AsyncConnection

from api.key_cache import KeyCache
from api.pagination import Cursor, Page
from api.queries import keys as q
from api.security import ROLES, Caller, Role, Scope, check_role_scope

PREFIX: Final = "vl_"
_TOKEN = re.compile(r"^vl_([0-9a-f]{16})_([A-Za-z0-9_-]{43})$")
TOUCH_EVERY: Final = timedelta(minutes=1)
Failure = Literal["malformed", "unknown", "wrong secret", "revoked", "expired"]


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """A key as it is listed: everything but the secret."""

    key_id: str
    name: str
    owner: str
    role: Role
    scope: Scope
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None
    revoked_at: datetime | None

    def active(self, now: datetime) -> bool:
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > now)


@dataclass(frozen=True, slots=True)
class NewKey:
    """A created key: ``token`` (``vl_<key id>_<secret>``) is shown once and never again."""

    token: str
    info: KeyInfo


def _info(row: q.KeyRow) -> KeyInfo:
    return KeyInfo(
        key_id=row.key_id,
        name=row.name,
        owner=row.owner,
        role=cast(Role, row.role),
        scope=_scope(row.sites, row.studies),
        created_at=row.created_at,
        expires_at=row.expires_at,
        last_used_at=row.last_used_at,
        revoked_at=row.revoked_at,
    )


def _scope(sites: list[str] | None, studies: list[str] | None) -> Scope:
    return Scope(None if sites is None else frozenset(sites), None if studies is None else frozenset(studies))


def digest(key_id: str, secret: str) -> bytes:
    return hashlib.sha256(f"{key_id}:{secret}".encode()).digest()


def split(token: str) -> tuple[str, str] | None:
    """``(key id, secret)`` of a well-formed key, else None."""
    m = _TOKEN.match(token)
    return None if m is None else (m.group(1), m.group(2))


def claimed_key_id(token: str) -> str | None:
    """The key id a token claims (for the audit of a failed authentication), if it has the key's shape."""
    parts = split(token)
    return None if parts is None else parts[0]


async def create_key(
    conn: AsyncConnection,
    *,
    name: str,
    owner: str,
    role: Role,
    scope: Scope,
    now: datetime,
    expires_at: datetime | None = None,
) -> NewKey:
    """A new key. ValueError for a role the scope does not fit (admin: everything; kiosk: one site), an
    expiry not after ``now``, an empty name or owner."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}")
    check_role_scope(role, scope)
    if not name.strip() or not owner.strip():
        raise ValueError("a key needs a name and an owner")
    if expires_at is not None and expires_at <= now:
        raise ValueError("expires_at must be in the future")
    key_id = secrets.token_hex(8)
    secret = secrets.token_urlsafe(32)
    row = await q.insert(
        conn,
        key_id=key_id,
        secret_sha256=digest(key_id, secret),
        name=name.strip(),
        owner=owner.strip(),
        role=role,
        sites=None if scope.sites is None else sorted(scope.sites),
        studies=None if scope.studies is None else sorted(scope.studies),
        created_at=now,
        expires_at=expires_at,
    )
    return NewKey(token=f"{PREFIX}{key_id}_{secret}", info=_info(row))


async def get_key(conn: AsyncConnection, key_id: str) -> KeyInfo | None:
    row = await q.get(conn, key_id)
    return None if row is None else _info(row)


async def list_keys(
    conn: AsyncConnection,
    *,
    cursor: Cursor,
    limit: int,
    role: Role | None = None,
    owner: str | None = None,
    active_at: datetime | None = None,
) -> Page[KeyInfo]:
    """Keys by creation time; with ``active_at`` only those neither revoked nor expired then."""
    page = await q.list_keys(conn, role=role, owner=owner, active_at=active_at, cursor=cursor, limit=limit)
    return Page([_info(r) for r in page.rows], page.next, page.prev)


async def revoke_key(conn: AsyncConnection, key_id: str, now: datetime) -> KeyInfo | None:
    """Revoke a key (None: no such key). Revoking again keeps the first revocation time."""
    row = await q.revoke(conn, key_id, now)
    return None if row is None else _info(row)


async def verify(
    conn: AsyncConnection,
    token: str,
    now: datetime,
    address: str | None = None,
    cache: KeyCache | None = None,
) -> Caller | Failure:
    """The caller a key stands for, or why it does not stand for one. With ``cache``, a key verified
    within its time to live is not read again, and one verified now is kept there."""
    if cache is not None:
        kept = cache.get(token, now, address)
        if kept is not None:
            return kept
    parts = split(token)
    if parts is None:
        return "malformed"
    key_id, secret = parts
    found = await q.credential(conn, key_id)
    if found is None:
        # the same work as for a known key: the answer's timing does not tell whether the id exists
        hmac.compare_digest(digest(key_id, secret), bytes(32))
        return "unknown"
    if not hmac.compare_digest(digest(key_id, secret), bytes(found.secret_sha256)):
        return "wrong secret"
    if found.revoked_at is not None:
        return "revoked"
    if found.expires_at is not None and found.expires_at <= now:
        return "expired"
    scope = _scope(found.sites, found.studies)
    caller = Caller(
        role=cast(Role, found.role),
        key_id=key_id,
        subject=found.owner,
        sites=scope.sites,
        studies=scope.studies,
        address=address,
    )
    if cache is not None:
        cache.put(token, caller, now, found.expires_at)
    return caller


async def touch(conn: AsyncConnection, key_id: str, now: datetime) -> None:
    """Record a use of the key (the stored time moves at most once per :data:`TOUCH_EVERY`)."""
    await q.touch(conn, key_id, now, TOUCH_EVERY)


async def replace_service_key(
    conn: AsyncConnection, *, name: str, owner: str, role: Role, scope: Scope, now: datetime
) -> NewKey:
    """A fresh key for a service that keeps no secret between runs (``vitalab up``'s simulated kiosk):
    the active keys of the same role and name are revoked, a new one is created (in ``conn``'s
    transaction)."""
    for key_id in await q.active_of(conn, role=role, name=name, now=now):
        await q.revoke(conn, key_id, now)
    return await create_key(conn, name=name, owner=owner, role=role, scope=scope, now=now)


async def first_admin_key(conn: AsyncConnection, now: datetime) -> NewKey | None:
    """An admin key when the database has no key at all yet (a first start), else None."""
    if await q.any_key(conn):
        return None
    return await create_key(
        conn, name="first admin", owner="vitalab up", role="admin", scope=Scope.everything(), now=now
    )


def write_secret(path: Path, token: str) -> None:
    """Write a key to ``path``, readable by its owner only (mode 0600 from the start)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    path.chmod(0o600)
