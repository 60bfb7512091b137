"""``vitalab keys create|list|revoke``: API keys at the command line (the functions of :mod:`api.keys`, on
``VITALAB_DATABASE_URL``). Each change is recorded in the audit log as done by ``cli:<user>``.

Mounted into the main command line as ``app.add_typer(cli_keys.app, name="keys")``.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import psycopg
import typer

from api import audit, keys
from api.pagination import FROM_START, Cursor
from api.security import ROLES, Scope
from vitalab.cli_admin import cli_caller, database_url

app = typer.Typer(no_args_is_help=True, help="API keys: create (shown once), list, revoke.")


def _url() -> str:
    return database_url("POST /v1/keys")


def _shown(info: keys.KeyInfo) -> dict[str, Any]:
    return {
        "key_id": info.key_id,
        "name": info.name,
        "owner": info.owner,
        "role": info.role,
        "scope": info.scope.entries(),
        "created_at": info.created_at.isoformat(),
        "expires_at": None if info.expires_at is None else info.expires_at.isoformat(),
        "last_used_at": None if info.last_used_at is None else info.last_used_at.isoformat(),
        "revoked_at": None if info.revoked_at is None else info.revoked_at.isoformat(),
    }


@app.command("create")
def create(
    name: Annotated[str, typer.Option(help="what the key is for, e.g. 'front desk kiosk'")],
    owner: Annotated[str, typer.Option(help="who holds it (a person, a team)")],
    role: Annotated[str, typer.Option(help="admin, operator, researcher, integrator or kiosk")],
    scope: Annotated[
        list[str] | None,
        typer.Option(help="repeatable: site:<id>, study:<id>, site:*, study:*, or * (an admin's)"),
    ] = None,
    expires_in_days: Annotated[
        float | None, typer.Option(min=0.001, help="expire after this many days")
    ] = None,
) -> None:
    """Create a key and print it once on stdout (its details go to stderr). Only its hash is stored."""
    if role not in ROLES:
        typer.echo(f"--role must be one of {', '.join(ROLES)}", err=True)
        raise typer.Exit(2)
    entries = scope if scope else (["*"] if role == "admin" else [])
    try:
        parsed = Scope.parse(entries)
    except ValueError as exc:
        typer.echo(f"--scope: {exc}", err=True)
        raise typer.Exit(2) from None
    now = datetime.now(UTC)
    expires = None if expires_in_days is None else now + timedelta(days=expires_in_days)

    async def run() -> keys.NewKey:
        async with (
            await psycopg.AsyncConnection.connect(_url()) as conn,
            conn.transaction(),
        ):
            made = await keys.create_key(
                conn, name=name, owner=owner, role=role, scope=parsed, now=now, expires_at=expires
            )
            await audit.record(conn, cli_caller(), "keys.create", made.info.key_id, "ok", now, None)
            return made

    try:
        made = asyncio.run(run())
    except ValueError as exc:
        typer.echo(f"cannot create the key: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(json.dumps(_shown(made.info)), err=True)
    typer.echo("the key is shown once; keep it secret:", err=True)
    typer.echo(made.token)


@app.command("list")
def list_(
    role: Annotated[str | None, typer.Option(help="only keys of this role")] = None,
    include_inactive: Annotated[bool, typer.Option("--all", help="revoked and expired keys too")] = False,
) -> None:
    """One JSON line per key (never its secret), by creation time."""
    if role is not None and role not in ROLES:
        typer.echo(f"--role must be one of {', '.join(ROLES)}", err=True)
        raise typer.Exit(2)
    now = datetime.now(UTC)

    async def run() -> list[keys.KeyInfo]:
        found: list[keys.KeyInfo] = []
        cursor: Cursor | None = FROM_START
        async with await psycopg.AsyncConnection.connect(_url()) as conn:
            while cursor is not None:
                page = await keys.list_keys(
                    conn,
                    cursor=cursor,
                    limit=1000,
                    role=role,
                    active_at=None if include_inactive else now,
                )
                found += page.rows
                cursor = page.next
        return found

    for info in asyncio.run(run()):
        typer.echo(json.dumps(_shown(info)))


@app.command("revoke")
def revoke(
    key_id: Annotated[str, typer.Argument(help="the key id (the part after `vl_`), or the whole key")],
) -> None:
    """Revoke a key: from now on it answers 401."""
    parts = keys.split(key_id)
    key_id = parts[0] if parts is not None else key_id
    now = datetime.now(UTC)

    async def run() -> keys.KeyInfo | None:
        async with (
            await psycopg.AsyncConnection.connect(_url()) as conn,
            conn.transaction(),
        ):
            info = await keys.revoke_key(conn, key_id, now)
            if info is not None:
                await audit.record(conn, cli_caller(), "keys.revoke", key_id, "ok", now, None)
            return info

    info = asyncio.run(run())
    if info is None:
        typer.echo(f"no key {key_id!r}", err=True)
        raise typer.Exit(1)
    typer.echo(json.dumps(_shown(info)))
