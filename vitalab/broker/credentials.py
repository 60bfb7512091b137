"""Secrets and Mosquitto 2.0 password-file hashes (pure functions).

A password-file line is ``username:$7$<iterations>$<base64 salt>$<base64 PBKDF2-HMAC-SHA512>``: what
``mosquitto_passwd`` writes on Mosquitto 2.0.x (101 iterations, a 12-byte salt, a 64-byte key). The
secrets issued here carry 192 random bits, so the broker's low iteration count costs nothing: nobody
brute-forces 2**192, whatever the hash rate.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import secrets
from collections.abc import Iterable, Mapping

from vitalab.broker.errors import PasswordHashError

PBKDF2_PREFIX = "$7$"
MOSQUITTO_ITERATIONS = 101
"""What ``mosquitto_passwd`` of Mosquitto 2.0.x uses (newer brokers read any count)."""
SALT_BYTES = 12
KEY_BYTES = 64
SECRET_BYTES = 24
"""192 bits; ``secrets.token_urlsafe`` makes 32 URL-safe characters of them (no percent-encoding)."""
MAX_ITERATIONS = 10_000_000


def new_secret(nbytes: int = SECRET_BYTES) -> str:
    """A fresh random secret, URL-safe (it can stand in an ``mqtt://user:secret@host`` URL as is)."""
    if nbytes < 16:
        raise ValueError(f"a secret needs at least 16 random bytes (128 bits), got {nbytes}")
    return secrets.token_urlsafe(nbytes)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def hash_password(secret: str, *, salt: bytes | None = None, iterations: int = MOSQUITTO_ITERATIONS) -> str:
    """The ``$7$`` hash Mosquitto's password file holds for ``secret`` (a random salt unless given)."""
    if salt is None:
        salt = os.urandom(SALT_BYTES)
    if not salt:
        raise ValueError("the salt must not be empty")
    if not 1 <= iterations <= MAX_ITERATIONS:
        raise ValueError(f"iterations must be within 1..{MAX_ITERATIONS}, got {iterations}")
    key = hashlib.pbkdf2_hmac("sha512", secret.encode("utf-8"), salt, iterations, KEY_BYTES)
    return f"{PBKDF2_PREFIX}{iterations}${_b64(salt)}${_b64(key)}"


def _decode_b64(what: str, text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise PasswordHashError(f"{what} is not base64") from None


def parse_hash(encoded: str) -> tuple[int, bytes, bytes]:
    """``(iterations, salt, key)`` of a ``$7$`` hash; anything else raises :class:`PasswordHashError`."""
    if not encoded.startswith(PBKDF2_PREFIX):
        raise PasswordHashError(f"not a $7$ (PBKDF2-SHA512) hash: starts with {encoded[:3]!r}")
    parts = encoded[len(PBKDF2_PREFIX) :].split("$")
    if len(parts) != 3:
        raise PasswordHashError("expected $7$<iterations>$<salt>$<hash>")
    iterations_s, salt_s, key_s = parts
    if not iterations_s.isdigit() or not 1 <= int(iterations_s) <= MAX_ITERATIONS:
        raise PasswordHashError(f"iterations must be a whole number within 1..{MAX_ITERATIONS}")
    salt = _decode_b64("salt", salt_s)
    key = _decode_b64("hash", key_s)
    if not salt:
        raise PasswordHashError("empty salt")
    if len(key) != KEY_BYTES:
        raise PasswordHashError(f"the hash must be {KEY_BYTES} bytes, got {len(key)}")
    return int(iterations_s), salt, key


def verify_password(secret: str, encoded: str) -> bool:
    """Does ``secret`` match the ``$7$`` hash? Compared in constant time; a malformed hash raises."""
    iterations, salt, key = parse_hash(encoded)
    candidate = hashlib.pbkdf2_hmac("sha512", secret.encode("utf-8"), salt, iterations, len(key))
    return hmac.compare_digest(candidate, key)


def render_password_file(entries: Iterable[tuple[str, str]]) -> str:
    """The password file for ``(username, hash)`` pairs, one ``user:hash`` line each, in the given order."""
    lines = []
    for username, encoded in entries:
        if not username or any(c in username for c in ":\n\r"):
            raise PasswordHashError(f"username {username!r} cannot stand in a password file")
        parse_hash(encoded)
        lines.append(f"{username}:{encoded}\n")
    return "".join(lines)


def parse_password_file(text: str) -> Mapping[str, str]:
    """``{username: hash}`` of a password file (blank lines and ``#`` comments skipped)."""
    found: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        username, sep, encoded = stripped.partition(":")
        if not sep or not username:
            raise PasswordHashError(f"line {number}: expected user:hash")
        parse_hash(encoded)
        found[username] = encoded
    return found
