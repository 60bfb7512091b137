"""Per-study pseudonyms: HMAC-SHA256 (RFC 2104) of the internal participant id under the study's secret.

A participant's pseudonym in a study is the first 32 hex digits (128 bits) of
``HMAC-SHA256(key_of_study, participant_id.bytes)``: stable within a study, unlinkable across studies (each
has its own 32-byte random key, :func:`new_key`), and not reversible without the key, which stays in the
``study_keys`` table and never leaves the server. Session references in exports are the same HMAC over
``b"session:" + the session id as 8 big-endian bytes``.

Exports compute pseudonyms inside their SQL (no per-row round trip), with PostgreSQL's built-in ``sha256``:
HMAC is ``H((K ^ opad) || H((K ^ ipad) || m))``, so :func:`pads` gives the two padded keys and the query
hashes twice (:func:`sql_hmac`). The tests check the SQL against :func:`pseudonym` (Python's ``hmac``).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Final
from uuid import UUID

from psycopg import sql

KEY_BYTES: Final = 32
PSEUDONYM_HEX: Final = 32
"""Hex digits kept of the HMAC (128 bits: collisions need ~2^64 participants)."""
SESSION_PREFIX: Final = b"session:"
_BLOCK: Final = 64  # SHA-256 block size (RFC 2104's B)
PSEUDONYM_PATTERN: Final = rf"^[0-9a-f]{{{PSEUDONYM_HEX}}}$"


def new_key() -> bytes:
    """A fresh secret for a study (32 random bytes from the OS's CSPRNG)."""
    return secrets.token_bytes(KEY_BYTES)


def pseudonym(key: bytes, participant_id: UUID) -> str:
    """The participant's pseudonym in the study whose secret is ``key``."""
    return hmac.new(key, participant_id.bytes, hashlib.sha256).hexdigest()[:PSEUDONYM_HEX]


def session_ref(key: bytes, session_id: int) -> str:
    """The reference of a session in the study whose secret is ``key``."""
    message = SESSION_PREFIX + session_id.to_bytes(8, "big", signed=True)
    return hmac.new(key, message, hashlib.sha256).hexdigest()[:PSEUDONYM_HEX]


@dataclass(frozen=True, slots=True)
class Pads:
    """``K ^ ipad`` and ``K ^ opad`` of RFC 2104 for one study key (query parameters, never stored)."""

    inner: bytes
    outer: bytes


def pads(key: bytes) -> Pads:
    if len(key) > _BLOCK:
        key = hashlib.sha256(key).digest()
    block = key.ljust(_BLOCK, b"\0")
    return Pads(bytes(b ^ 0x36 for b in block), bytes(b ^ 0x5C for b in block))


def sql_hmac(message: sql.Composable, inner: str = "ipad", outer: str = "opad") -> sql.Composed:
    """SQL for the hex pseudonym of ``message`` (a bytea expression) with the pads bound as the named
    parameters ``inner`` and ``outer``."""
    return sql.SQL("left(encode(sha256({o}::bytea || sha256({i}::bytea || {m})), 'hex'), {n})").format(
        o=sql.Placeholder(outer), i=sql.Placeholder(inner), m=message, n=sql.Literal(PSEUDONYM_HEX)
    )


def sql_participant(column: sql.Composable) -> sql.Composed:
    """SQL for the pseudonym of the uuid column ``column``."""
    return sql_hmac(sql.SQL("uuid_send({})").format(column))


def sql_session(column: sql.Composable) -> sql.Composed:
    """SQL for the reference of the bigint session id column ``column``."""
    return sql_hmac(sql.SQL("{} || int8send({})").format(sql.Literal(SESSION_PREFIX), column))
