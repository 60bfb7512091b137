"""``vitalab participants erase ID``: erase a participant at the command line (:mod:`api.services.erasure`,
on ``VITALAB_DATABASE_URL``), recorded in the audit log as done by ``cli:<user>``; prints the report as JSON.

Mounted into the main command line as ``app.add_typer(cli_participants.app, name="participants")``.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime
from typing import Annotated

import psycopg
import typer

from api.errors import Problem
from api.research_models import ErasureReport
from api.services import erasure
from vitalab.cli_admin import cli_caller, database_url

app = typer.Typer(no_args_is_help=True, help="Participants: erasure.")


@app.command("erase")
def erase(
    participant_id: Annotated[uuid.UUID, typer.Argument(help="the participant's id")],
    yes: Annotated[bool, typer.Option("--yes", help="do not ask for confirmation")] = False,
) -> None:
    """Remove everything attributable to a participant, in one transaction; print the report (JSON)."""
    url = database_url("POST /v1/participants/{id}/erase")
    if not yes:
        typer.confirm(
            f"erase participant {participant_id} and all their data? This cannot be undone", abort=True
        )
    operator = cli_caller()

    async def run() -> ErasureReport:
        async with await psycopg.AsyncConnection.connect(url) as conn:
            return await erasure.erase(
                conn, participant_id, caller=operator, now=datetime.now(UTC), field="participant_id"
            )

    try:
        report = asyncio.run(run())
    except Problem as exc:
        typer.echo(f"vitalab participants erase: {exc.detail}", err=True)
        raise typer.Exit(1) from None
    except psycopg.OperationalError as exc:
        typer.echo(f"vitalab participants erase: the database is unavailable: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(json.dumps(report.model_dump(mode="json"), indent=2))
