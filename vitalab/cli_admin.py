"""What the administrative commands (``vitalab keys``, ``vitalab participants``) share: the database they
act on, and who they act as in the audit log."""

from __future__ import annotations

import getpass

import typer

from api.security import Caller
from vitalab.settings import load_settings


def database_url(instead: str) -> str:
    """``VITALAB_DATABASE_URL``, or exit 2 with a line saying what to do ``instead`` (the HTTP route) when
    vitalab runs on its embedded database."""
    try:
        url = load_settings().database_url
    except ValueError as exc:
        typer.echo(f"configuration error: {exc}", err=True)
        raise typer.Exit(2) from None
    if not url:
        typer.echo(
            "VITALAB_DATABASE_URL is not set. With `vitalab up` on its embedded database, use the admin key "
            f"it wrote to its data directory (admin.key) and {instead} instead.",
            err=True,
        )
        raise typer.Exit(2)
    return url


def cli_caller() -> Caller:
    """An administrator at this machine: recorded as ``cli:<user>``."""
    return Caller(
        role="admin", key_id=None, subject=f"cli:{getpass.getuser()}", sites=None, studies=None, address=None
    )
