"""API keys (``api_keys``): the hash of the secret, the role and scope, expiry, use and revocation."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from psycopg import AsyncConnection, sql

from api.pagination import Cursor, Keyset, Page
from api.queries import cols, exists, fetch_one, fetch_page

KEYSET = Keyset(("created_at", "key_id"), (datetime, str))
_INFO_COLS = (
    "key_id",
    "name",
    "owner",
    "role",
    "sites",
    "studies",
    "created_at",
    "expires_at",
    "last_used_at",
    "revoked_at",
)


@dataclass(frozen=True, slots=True)
class KeyRow:
    key_id: str
    name: str
    owner: str
    role: str
    sites: list[str] | None
    studies: list[str] | None
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None
    revoked_at: datetime | None


@dataclass(frozen=True, slots=True)
class Credential:
    """What authentication needs of a key."""

    key_id: str
    secret_sha256: bytes
    owner: str
    role: str
    sites: list[str] | None
    studies: list[str] | None
    expires_at: datetime | None
    revoked_at: datetime | None


async def insert(
    conn: AsyncConnection,
    *,
    key_id: str,
    secret_sha256: bytes,
    name: str,
    owner: str,
    role: str,
    sites: list[str] | None,
    studies: list[str] | None,
    created_at: datetime,
    expires_at: datetime | None,
) -> KeyRow:
    values: dict[str, Any] = {
        "key_id": key_id,
        "secret_sha256": secret_sha256,
        "name": name,
        "owner": owner,
        "role": role,
        "sites": sites,
        "studies": studies,
        "created_at": created_at,
        "expires_at": expires_at,
    }
    query = sql.SQL("INSERT INTO api_keys ({}) VALUES ({}) RETURNING {}").format(
        cols(values), sql.SQL(", ").join(sql.Placeholder(c) for c in values), cols(_INFO_COLS)
    )
    row = await fetch_one(conn, KeyRow, query, values)
    assert row is not None  # INSERT ... RETURNING returns the row or raises
    return row


async def credential(conn: AsyncConnection, key_id: str) -> Credential | None:
    query = sql.SQL(
        "SELECT key_id, secret_sha256, owner, role, sites, studies, expires_at, revoked_at "
        "FROM api_keys WHERE key_id = %s"
    )
    return await fetch_one(conn, Credential, query, (key_id,))


async def touch(conn: AsyncConnection, key_id: str, now: datetime, every: timedelta) -> None:
    """Record a use at ``now`` unless one was recorded less than ``every`` before."""
    await conn.execute(
        "UPDATE api_keys SET last_used_at = %(now)s WHERE key_id = %(k)s "
        "AND (last_used_at IS NULL OR last_used_at <= %(before)s)",
        {"k": key_id, "now": now, "before": now - every},
    )


async def get(conn: AsyncConnection, key_id: str) -> KeyRow | None:
    query = sql.SQL("SELECT {} FROM api_keys WHERE key_id = %s").format(cols(_INFO_COLS))
    return await fetch_one(conn, KeyRow, query, (key_id,))


async def revoke(conn: AsyncConnection, key_id: str, now: datetime) -> KeyRow | None:
    """Revoke the key at ``now`` (a revoked key stays revoked at its first revocation time)."""
    query = sql.SQL(
        "UPDATE api_keys SET revoked_at = coalesce(revoked_at, %s) WHERE key_id = %s RETURNING {}"
    ).format(cols(_INFO_COLS))
    return await fetch_one(conn, KeyRow, query, (now, key_id))


async def list_keys(
    conn: AsyncConnection,
    *,
    role: str | None,
    owner: str | None,
    active_at: datetime | None,
    cursor: Cursor,
    limit: int,
) -> Page[KeyRow]:
    """Keys by creation; ``active_at``: only those neither revoked nor expired then."""
    select = sql.SQL("SELECT {} FROM api_keys").format(cols(_INFO_COLS))
    where = sql.SQL(
        "(%(role)s::text IS NULL OR role = %(role)s) AND (%(owner)s::text IS NULL OR owner = %(owner)s) "
        "AND (%(at)s::timestamptz IS NULL OR "
        "(revoked_at IS NULL AND (expires_at IS NULL OR expires_at > %(at)s)))"
    )
    params: dict[str, Any] = {"role": role, "owner": owner, "at": active_at}
    return await fetch_page(
        conn, KeyRow, select, where, params, KEYSET, cursor, limit, lambda k: (k.created_at, k.key_id)
    )


async def active_of(conn: AsyncConnection, *, role: str, name: str, now: datetime) -> list[str]:
    """Ids of the keys of ``role`` named ``name`` neither revoked nor expired at ``now``."""
    cur = await conn.execute(
        "SELECT key_id FROM api_keys WHERE role = %s AND name = %s AND revoked_at IS NULL "
        "AND (expires_at IS NULL OR expires_at > %s) ORDER BY key_id",
        (role, name, now),
    )
    return [str(r[0]) for r in await cur.fetchall()]


async def any_key(conn: AsyncConnection) -> bool:
    return await exists(conn, sql.SQL("SELECT 1 FROM api_keys"))
