"""Cursor (keyset) pagination: every list is read in pages along a unique ordering key, never capped.

A list endpoint orders its rows by a key that is unique within what it lists (``(t)`` for one device's
samples, ``(started_at, session_id)`` for sessions, ``(received_at, id)`` newest first for dead letters ...)
and returns at most ``limit`` rows. When more rows exist, the response has a ``Link`` header (RFC 8288) with
``rel="next"`` (rows after the page in the list's order) and/or ``rel="prev"`` (rows before it), whose
target is the same request with an opaque ``cursor``. The cursor holds the key of the page's edge row and
the direction: the next page starts strictly after that key, so rows sharing a timestamp are neither lost
nor repeated, and rows added meanwhile are picked up in key order. ``limit`` is a page size, not a cap.

Cursors are base64url JSON; a cursor that does not decode to the list's key types is 422 (``query.cursor``).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Annotated, Any, Final, Generic, TypeVar

from fastapi import Query, Request, Response
from psycopg import sql

from api.errors import invalid

T = TypeVar("T")
MAX_PAGE: Final = 1_000
MAX_PAGE_LARGE: Final = 10_000
KeyType = type[datetime] | type[date] | type[int] | type[str]
MAX_CURSOR_CHARS: Final = 1024

CursorParam = Annotated[
    str | None,
    Query(
        max_length=MAX_CURSOR_CHARS,
        description='opaque: copy it from a `Link: <...>; rel="next"` (or `rel="prev"`) header',
    ),
]


def limit_query(maximum: int) -> Any:
    """The ``limit`` query parameter: rows per page (at most ``maximum``); more rows come by ``Link``."""
    return Query(
        ge=1,
        le=maximum,
        description=f"rows per page (at most {maximum}); when more rows exist the `Link` header says where "
        "the next page is",
    )


PageLimit = Annotated[int, limit_query(MAX_PAGE)]
LargePageLimit = Annotated[int, limit_query(MAX_PAGE_LARGE)]


@dataclass(frozen=True, slots=True)
class Keyset:
    """The ordering key of a list: column expressions and their Python types, ascending or not."""

    columns: tuple[str, ...]
    types: tuple[KeyType, ...]
    descending: bool = False


@dataclass(frozen=True, slots=True)
class Cursor:
    """Where a page starts: strictly after ``key`` in the list's order (``backward``: strictly before it,
    read towards the start). ``key`` None: from the start (``backward``: from the end)."""

    backward: bool = False
    key: tuple[Any, ...] | None = None

    def encode(self) -> str:
        values = ["p" if self.backward else "n"] + [_dump(v) for v in self.key or ()]
        raw = json.dumps(values, separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


FROM_START: Final = Cursor()
FROM_END: Final = Cursor(backward=True)


def _dump(value: Any) -> Any:
    return value.isoformat() if isinstance(value, date) else value


def _load(value: Any, kind: KeyType) -> Any:
    if kind is datetime:
        t = datetime.fromisoformat(value)
        if t.tzinfo is None:
            raise ValueError("naive time")
        return t
    if kind is date:
        return date.fromisoformat(value)
    if kind is int:
        if type(value) is not int:
            raise TypeError("not an integer")
        return value
    if type(value) is not str or "\x00" in value:
        raise TypeError("not a text")
    return value


def decode(text: str | None, keyset: Keyset, default: Cursor = FROM_START) -> Cursor:
    """The cursor of a request (``default`` without one); 422 for anything this list did not hand out."""
    if text is None:
        return default
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        values = json.loads(raw)
        key = _key(values, keyset)
    except (binascii.Error, UnicodeDecodeError, json.JSONDecodeError, ValueError, TypeError):
        raise invalid("query.cursor", "not a cursor of this list (copy it from the Link header)") from None
    return Cursor(backward=values[0] == "p", key=key)


def _key(values: Any, keyset: Keyset) -> tuple[Any, ...]:
    if not isinstance(values, list) or len(values) != len(keyset.types) + 1 or values[0] not in ("n", "p"):
        raise ValueError("not a cursor")
    return tuple(_load(v, kind) for v, kind in zip(values[1:], keyset.types, strict=True))


def clause(keyset: Keyset, cursor: Cursor, params: dict[str, Any]) -> tuple[sql.Composable, sql.Composable]:
    """``(condition, order)`` of a page read: rows after the cursor's key, in reading order. The key values
    are added to ``params`` as ``_k0, _k1, ...``."""
    reading_descending = keyset.descending != cursor.backward
    cols = sql.SQL(", ").join(sql.SQL(c) for c in keyset.columns)
    order = sql.SQL(", ").join(
        sql.SQL("{} {}").format(sql.SQL(c), sql.SQL("DESC" if reading_descending else "ASC"))
        for c in keyset.columns
    )
    if cursor.key is None:
        return sql.SQL("TRUE"), order
    names = [f"_k{i}" for i in range(len(cursor.key))]
    params.update(zip(names, cursor.key, strict=True))
    condition = sql.SQL("({}) {} ({})").format(
        cols,
        sql.SQL("<" if reading_descending else ">"),
        sql.SQL(", ").join(sql.Placeholder(n) for n in names),
    )
    return condition, order


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    rows: list[T]
    """In the list's order."""
    next: Cursor | None
    prev: Cursor | None


def page(read: Sequence[T], cursor: Cursor, limit: int, key: Callable[[T], tuple[Any, ...]]) -> Page[T]:
    """The page out of up to ``limit + 1`` rows read in reading order (one more than a page says more)."""
    more = len(read) > limit
    rows = list(read[:limit])
    if cursor.backward:
        rows.reverse()
    if not rows:
        return Page(rows, None, None)
    first, last = Cursor(True, key(rows[0])), Cursor(False, key(rows[-1]))
    if cursor.backward:  # read towards the start: more before it; after it, whatever the cursor came from
        return Page(rows, last if cursor.key is not None else None, first if more else None)
    return Page(rows, last if more else None, first if cursor.key is not None else None)


def link(request: Request, response: Response, result: Page[Any]) -> None:
    """``Link`` header (RFC 8288) with the next and previous pages of ``result``, if any."""
    links = []
    for rel, cursor in (("next", result.next), ("prev", result.prev)):
        if cursor is not None:
            url = request.url.include_query_params(cursor=cursor.encode())
            links.append(f'<{url.path}?{url.query}>; rel="{rel}"')
    if links:
        response.headers["Link"] = ", ".join(links)


PAGED: Final[dict[int | str, dict[str, Any]]] = {
    200: {
        "description": "one page of the list",
        "headers": {
            "Link": {
                "description": 'RFC 8288 links to the next (rel="next") and previous (rel="prev") pages, '
                "present when such rows exist",
                "schema": {"type": "string"},
            }
        },
    }
}
"""OpenAPI ``responses`` entry of a paged list."""
