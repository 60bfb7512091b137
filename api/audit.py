"""The audit log: every write, every read of participant-level data and every authentication failure, with
when, which key or subject, role, action, resource, outcome and client address. The table (migration 0008)
refuses UPDATE, DELETE and TRUNCATE; admins read it through ``GET /v1/audit``.

The guard (:mod:`api.guard`) records HTTP requests by itself, as the policy (:mod:`api.policy`) says; other
code (the CLI's key management, export jobs) calls :func:`record`.
"""

from __future__ import annotations

from datetime import datetime

from psycopg import AsyncConnection

from api.queries import audit as q
from api.security import Caller


async def record(
    conn: AsyncConnection,
    caller: Caller | None,
    action: str,
    resource: str,
    outcome: str,
    now: datetime,
    address: str | None,
) -> None:
    """Append one entry (in ``conn``'s transaction: it stands or falls with what it records). ``caller``
    None: not authenticated (or a local operator at the command line)."""
    await q.insert(
        conn,
        at=now,
        key_id=None if caller is None else caller.key_id,
        subject=None if caller is None else caller.subject,
        role=None if caller is None else caller.role,
        action=action,
        resource=resource,
        outcome=outcome,
        address=address if address is not None else (None if caller is None else caller.address),
    )


async def record_refused(
    conn: AsyncConnection,
    *,
    key_id: str | None,
    resource: str,
    outcome: str,
    now: datetime,
    address: str | None,
) -> None:
    """Append a refused authentication (``key_id``: the key the credential claimed to be, if any)."""
    await q.insert(
        conn,
        at=now,
        key_id=key_id,
        subject=None,
        role=None,
        action="authenticate",
        resource=resource,
        outcome=outcome,
        address=address,
    )
