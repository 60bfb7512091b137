"""What a failed database write means for the ingester, by SQLSTATE class.

- **transient**: the server or the connection will come back (class 08 connection exception, 40 transaction
  rollback such as a deadlock or serialization failure, 53 insufficient resources, 57 operator
  intervention such as an admin or crash shutdown or a server still starting, 58 system error), and
  errors without a SQLSTATE that psycopg raises for a lost or refused connection. Retried with backoff.
- **data**: this batch's content was refused (class 22 data exception, 23 integrity constraint violation,
  or a value psycopg could not send). The batch is split to find the message(s) responsible, which are
  dead-lettered; the others are stored.
- **fatal**: anything else, e.g. 42 (undefined table or column, insufficient privilege), 3D/3F (no such
  database or schema), 0A, 25, XX. Retrying cannot help: the ingester stops with one line naming the
  SQLSTATE, and a non-zero exit.

A connection attempt that fails carries no SQLSTATE (libpq reports it as text), so it counts as transient:
a server that is restarting looks the same as one that is down.
"""

from __future__ import annotations

import enum

import msgspec
import psycopg
from psycopg import errors as pgerrors

from ingest.errors import IngestError

TRANSIENT_CLASSES = frozenset({"08", "40", "53", "57", "58"})
DATA_CLASSES = frozenset({"22", "23"})


class Severity(enum.Enum):
    TRANSIENT = "transient"
    DATA = "data"
    FATAL = "fatal"


def classify(exc: BaseException) -> Severity:
    if isinstance(exc, psycopg.Error):
        state = exc.sqlstate
        if state is None:  # raised by psycopg itself, not by the server
            if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
                return Severity.TRANSIENT  # connection lost, refused or closed
            if isinstance(exc, psycopg.DataError):
                return Severity.DATA  # a value that cannot be sent (a NUL in text, an out-of-range int)
            return Severity.FATAL
        if state[:2] in TRANSIENT_CLASSES:
            return Severity.TRANSIENT
        if state[:2] in DATA_CLASSES:
            return Severity.DATA
        return Severity.FATAL
    # adapting a Python value failed before anything reached the server
    if isinstance(exc, ValueError | OverflowError | msgspec.EncodeError):
        return Severity.DATA
    return Severity.FATAL


def describe(exc: BaseException) -> str:
    """One line: ``42P01 UndefinedTable: relation "samples" does not exist``."""
    if isinstance(exc, psycopg.Error):
        text = str(exc).strip()
        message = " ".join((exc.diag.message_primary or text).split())
        if exc.sqlstate is None:
            return f"{type(exc).__name__}: {message}"
        try:
            name = pgerrors.lookup(exc.sqlstate).__name__
        except KeyError:
            name = type(exc).__name__
        return f"{exc.sqlstate} {name}: {message}"
    return " ".join(f"{type(exc).__name__}: {exc}".split())


class DatabaseRejected(IngestError):
    """A database error that retrying cannot fix (schema mismatch, permissions): the ingester stops."""

    def __init__(self, sqlstate: str | None, detail: str) -> None:
        super().__init__(
            f"database error is not transient, the ingester stops: {detail} "
            "(check VITALAB_DATABASE_URL, the role's privileges and `vitalab db migrate`)"
        )
        self.sqlstate = sqlstate
        self.detail = detail

    @classmethod
    def from_error(cls, exc: BaseException) -> DatabaseRejected:
        state = exc.sqlstate if isinstance(exc, psycopg.Error) else None
        return cls(state, describe(exc))
