"""The data-access layer: the SQL of one resource per module, composed with ``psycopg.sql``, rows typed with
``class_row``. Route handlers call these functions; they never hold SQL themselves."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from psycopg import AsyncConnection, sql
from psycopg.rows import class_row

from api.pagination import Cursor, Keyset, Page, clause, page

T = TypeVar("T")
Query = sql.SQL | sql.Composed


def cols(names: Iterable[str], table: str | None = None) -> sql.Composed:
    """``a, b, c`` (or ``t.a, t.b, t.c``) as identifiers."""
    return sql.SQL(", ").join(sql.Identifier(table, n) if table else sql.Identifier(n) for n in names)


async def fetch_one(conn: AsyncConnection, row: type[T], query: Query, params: Any = None) -> T | None:
    async with conn.cursor(row_factory=class_row(row)) as cur:
        await cur.execute(query, params)
        return await cur.fetchone()


async def fetch_all(conn: AsyncConnection, row: type[T], query: Query, params: Any = None) -> list[T]:
    async with conn.cursor(row_factory=class_row(row)) as cur:
        await cur.execute(query, params)
        return await cur.fetchall()


async def exists(conn: AsyncConnection, query: Query, params: Any = None) -> bool:
    cur = await conn.execute(sql.SQL("SELECT EXISTS ({})").format(query), params)
    found = await cur.fetchone()
    return bool(found and found[0])


async def fetch_page(
    conn: AsyncConnection,
    row: type[T],
    select: sql.Composable,
    where: sql.Composable,
    params: dict[str, Any],
    keyset: Keyset,
    cursor: Cursor,
    limit: int,
    key: Callable[[T], tuple[Any, ...]],
) -> Page[T]:
    """One page of ``select ... WHERE where`` along ``keyset`` (``select`` has no WHERE of its own)."""
    params = dict(params)
    condition, order = clause(keyset, cursor, params)
    params["_limit"] = limit + 1
    query = sql.SQL("{} WHERE ({}) AND {} ORDER BY {} LIMIT %(_limit)s").format(
        select, where, condition, order
    )
    return page(await fetch_all(conn, row, query, params), cursor, limit, key)


def in_sites(column: str) -> sql.Composed:
    """``column`` is one of ``%(sites)s`` (NULL: every site): a list filtered to the caller's scope."""
    return sql.SQL("(%(sites)s::text[] IS NULL OR {} = ANY(%(sites)s))").format(sql.SQL(column))
