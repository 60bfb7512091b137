"""Keys for the composition root (``vitalab up``): the first admin key, and a key for each service of its own.

On a first start (no key in the database) :func:`keys_for_up` creates an admin key, writes it into the data
directory (``admin.key``, mode 0600) and returns it so that it is printed once; on later starts the file is
still there and nothing is printed. The simulated kiosk gets a fresh kiosk key for the simulated site at every
start (the previous one is revoked): it keeps no secret between runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Final

import psycopg

from api import keys
from api.security import Scope

ADMIN_KEY_FILE: Final = "admin.key"
KIOSK_KEY_NAME: Final = "vitalab up: simulated kiosk"


@dataclass(frozen=True, slots=True)
class UpKeys:
    admin: str | None
    """The admin key made at this (first) start, to print once; None: made at an earlier start."""
    admin_file: Path
    kiosk: str
    """A kiosk key of the simulated site."""


async def keys_for_up(database_url: str, data_dir: Path, site: str, now: datetime) -> UpKeys:
    admin_file = data_dir / ADMIN_KEY_FILE
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        async with conn.transaction():
            first = await keys.first_admin_key(conn, now)
            if first is not None:
                keys.write_secret(admin_file, first.token)
        async with conn.transaction():
            kiosk = await keys.replace_service_key(
                conn,
                name=KIOSK_KEY_NAME,
                owner="vitalab up",
                role="kiosk",
                scope=Scope(frozenset({site}), frozenset()),
                now=now,
            )
    return UpKeys(None if first is None else first.token, admin_file, kiosk.token)
