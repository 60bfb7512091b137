"""Mosquitto password hashes and secrets, checked against mosquitto_passwd (an independent
implementation of the same format)."""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import missing
from vitalab.broker.credentials import (
    hash_password,
    new_secret,
    parse_hash,
    parse_password_file,
    render_password_file,
    verify_password,
)
from vitalab.broker.errors import PasswordHashError

HASH_RE = re.compile(r"^\$7\$101\$([A-Za-z0-9+/=]+)\$([A-Za-z0-9+/=]+)$")


def _mosquitto_passwd(tmp_path: Path, username: str, password: str) -> str:
    binary = shutil.which("mosquitto_passwd", path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/bin"]))
    if binary is None:
        missing("mosquitto_passwd is not installed (Debian package mosquitto)")
    assert binary is not None
    path = tmp_path / "passwd"
    subprocess.run([binary, "-c", "-b", str(path), username, password], check=True, capture_output=True)
    return parse_password_file(path.read_text())[username]


def test_hash_has_mosquitto_2_0_shape() -> None:
    encoded = hash_password("s3cret")
    match = HASH_RE.match(encoded)
    assert match is not None, encoded
    assert len(base64.b64decode(match.group(1))) == 12
    assert len(base64.b64decode(match.group(2))) == 64


def test_salts_differ_so_hashes_differ() -> None:
    assert hash_password("same") != hash_password("same")


def test_verify_accepts_the_secret_and_nothing_else() -> None:
    encoded = hash_password("correct horse")
    assert verify_password("correct horse", encoded)
    assert not verify_password("correct hors", encoded)
    assert not verify_password("", encoded)


def test_hash_made_by_mosquitto_passwd_verifies(tmp_path: Path) -> None:
    encoded = _mosquitto_passwd(tmp_path, "bike-01", "pa:ss wörd")
    assert verify_password("pa:ss wörd", encoded)
    assert not verify_password("pa:ss word", encoded)


def test_same_salt_gives_mosquitto_passwds_hash_exactly(tmp_path: Path) -> None:
    encoded = _mosquitto_passwd(tmp_path, "gw-1", "another secret")
    iterations, salt, _key = parse_hash(encoded)
    assert iterations == 101  # what Mosquitto 2.0.x writes
    assert hash_password("another secret", salt=salt, iterations=iterations) == encoded


@pytest.mark.parametrize(
    ("encoded", "problem"),
    [
        ("$6$salt$hash", "not a $7$"),
        ("plaintext", "not a $7$"),
        ("$7$101$onlysalt", "expected"),
        ("$7$abc$AAAA$" + base64.b64encode(bytes(64)).decode(), "iterations"),
        ("$7$0$AAAA$" + base64.b64encode(bytes(64)).decode(), "iterations"),
        ("$7$101$%%%%$" + base64.b64encode(bytes(64)).decode(), "salt is not base64"),
        ("$7$101$AAAA$" + base64.b64encode(bytes(32)).decode(), "64 bytes"),
        ("$7$101$$" + base64.b64encode(bytes(64)).decode(), "empty salt"),
    ],
)
def test_malformed_hashes_are_typed_errors(encoded: str, problem: str) -> None:
    with pytest.raises(PasswordHashError, match=re.escape(problem)):
        verify_password("x", encoded)


def test_secrets_are_long_random_and_url_safe() -> None:
    secrets = {new_secret() for _ in range(50)}
    assert len(secrets) == 50
    for secret in secrets:
        assert re.fullmatch(r"[A-Za-z0-9_-]{32}", secret), secret  # 24 bytes = 192 bits, base64url
    with pytest.raises(ValueError, match="128 bits"):
        new_secret(15)


def test_password_file_round_trip_and_refusals() -> None:
    entries = [("bike-01", hash_password("a")), ("gw-1", hash_password("b"))]
    text = render_password_file(entries)
    assert text.splitlines() == [f"{u}:{h}" for u, h in entries]
    assert dict(parse_password_file("# comment\n\n" + text)) == dict(entries)
    with pytest.raises(PasswordHashError, match="cannot stand"):
        render_password_file([("a:b", hash_password("x"))])
    with pytest.raises(PasswordHashError, match="line 1"):
        parse_password_file("no-separator\n")
