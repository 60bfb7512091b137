"""The append-only audit log (``audit_log``)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg import AsyncConnection, sql

from api.pagination import Cursor, Keyset, Page
from api.queries import fetch_page

KEYSET = Keyset(("at", "id"), (datetime, int), descending=True)
"""Newest first; id breaks ties of ``at``."""
MAX_TEXT = 2000


@dataclass(frozen=True, slots=True)
class AuditRow:
    id: int
    at: datetime
    key_id: str | None
    subject: str | None
    role: str | None
    action: str
    resource: str
    outcome: str
    address: str | None


async def insert(
    conn: AsyncConnection,
    *,
    at: datetime,
    key_id: str | None,
    subject: str | None,
    role: str | None,
    action: str,
    resource: str,
    outcome: str,
    address: str | None,
) -> None:
    await conn.execute(
        "INSERT INTO audit_log (at, key_id, subject, role, action, resource, outcome, address) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
        (
            at,
            key_id,
            None if subject is None else subject[:MAX_TEXT],
            role,
            action[:MAX_TEXT],
            resource[:MAX_TEXT],
            outcome[:MAX_TEXT],
            address,
        ),
    )


async def list_entries(
    conn: AsyncConnection,
    *,
    since: datetime | None,
    until: datetime | None,
    key_id: str | None,
    subject: str | None,
    role: str | None,
    action: str | None,
    outcome: str | None,
    cursor: Cursor,
    limit: int,
) -> Page[AuditRow]:
    """Entries in ``[since, until)``, newest first; ``outcome`` matches its start (``4`` for every 4xx)."""
    select = sql.SQL(
        "SELECT id, at, key_id, subject, role, action, resource, outcome, address FROM audit_log"
    )
    where = sql.SQL(
        "(%(since)s::timestamptz IS NULL OR at >= %(since)s) "
        "AND (%(until)s::timestamptz IS NULL OR at < %(until)s) "
        "AND (%(key)s::text IS NULL OR key_id = %(key)s) "
        "AND (%(subject)s::text IS NULL OR subject = %(subject)s) "
        "AND (%(role)s::text IS NULL OR role = %(role)s) "
        "AND (%(action)s::text IS NULL OR action = %(action)s) "
        "AND (%(outcome)s::text IS NULL OR starts_with(outcome, %(outcome)s))"
    )
    params: dict[str, Any] = {
        "since": since,
        "until": until,
        "key": key_id,
        "subject": subject,
        "role": role,
        "action": action,
        "outcome": outcome,
    }
    return await fetch_page(
        conn, AuditRow, select, where, params, KEYSET, cursor, limit, lambda r: (r.at, r.id)
    )
