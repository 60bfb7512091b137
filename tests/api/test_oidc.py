"""Single sign-on: JWTs of an OpenID Connect issuer, checked against its JWKS, with a key pair and a key set
made in the test and served (discovery document and JWKS) by a local HTTP server."""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
import psycopg
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from tests.api.seed import NOW, seed
from tests.api.support import app_at, assert_problem, bearer, serve

pytestmark = pytest.mark.asyncio

AUDIENCE = "vitalab-api"
KID = "test-key-1"


@contextlib.contextmanager
def identity_provider(public_jwk: dict[str, Any]) -> Iterator[str]:
    """An issuer at ``http://127.0.0.1:<port>`` with a discovery document and a JWKS; yields its URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    issuer = f"http://127.0.0.1:{server.server_address[1]}"
    documents = {
        "/.well-known/openid-configuration": {"issuer": issuer, "jwks_uri": f"{issuer}/keys"},
        "/keys": {"keys": [public_jwk]},
    }

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            doc = documents.get(self.path)
            body = json.dumps(doc).encode()
            self.send_response(200 if doc is not None else 404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # quiet
            pass

    server.RequestHandlerClass = Handler
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield issuer
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def key_pair() -> tuple[rsa.RSAPrivateKey, dict[str, Any]]:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk: dict[str, Any] = json.loads(RSAAlgorithm.to_jwk(private.public_key()))
    jwk |= {"kid": KID, "use": "sig", "alg": "RS256"}
    return private, jwk


def token(private: rsa.RSAPrivateKey, issuer: str, **claims: Any) -> str:
    payload: dict[str, Any] = {
        "iss": issuer,
        "aud": AUDIENCE,
        "sub": "alice@uni.example",
        "iat": int(NOW.timestamp()),
        "exp": int((NOW + timedelta(hours=1)).timestamp()),
        "vitalab_role": "operator",
        "vitalab_scope": ["site:gym-a"],
    }
    payload.update(claims)
    payload = {k: v for k, v in payload.items() if v is not None}
    return jwt.encode(payload, private, algorithm="RS256", headers={"kid": KID})


async def test_tokens_of_the_issuer_are_accepted_with_their_role_and_scope(database_url: str) -> None:
    seed(database_url)
    private, jwk = key_pair()
    stranger, _ = key_pair()
    with identity_provider(jwk) as issuer:
        app = app_at(database_url, NOW, oidc_issuer=issuer, oidc_audience=AUDIENCE)
        async with serve(app, key=None) as http:
            operator = bearer(token(private, issuer))
            devices = await http.get("/v1/devices", headers=operator)
            assert devices.status_code == 200, devices.text
            assert {d["site_id"] for d in devices.json()} == {"gym-a"}
            assert_problem(await http.get("/v1/devices", params={"site": "gym-b"}, headers=operator), 404)
            assert (await http.get("/v1/sessions", headers=operator)).status_code == 200
            assert_problem(await http.get("/v1/keys", headers=operator), 403)
            admin = bearer(token(private, issuer, vitalab_role="admin", vitalab_scope=None, sub="root@uni"))
            assert (await http.get("/v1/keys", headers=admin)).status_code == 200
            # a space-separated scope claim works too
            spaced = bearer(token(private, issuer, vitalab_scope="site:gym-b study:s1"))
            assert (await http.get("/v1/devices", headers=spaced)).json() == []

            refused = {
                "expired": token(private, issuer, exp=int((NOW - timedelta(minutes=5)).timestamp())),
                "not yet valid": token(private, issuer, nbf=int((NOW + timedelta(minutes=5)).timestamp())),
                "another audience": token(private, issuer, aud="someone-else"),
                "another issuer": token(private, issuer, iss="https://evil.example"),
                "another key": token(stranger, issuer),
                "no subject": token(private, issuer, sub=None),
                "no expiry": token(private, issuer, exp=None),
                "garbage": "eyJhbGciOiJub25lIn0.e30.",
            }
            # HMAC signed with the public key as the secret (algorithm confusion): refused
            public_pem = private.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            claims = jwt.decode(token(private, issuer), options={"verify_signature": False})
            refused["hmac with the public key"] = _hmac(claims, public_pem)
            for why, bad in refused.items():
                r = await http.get("/v1/devices", headers=bearer(bad))
                assert_problem(r, 401)
                assert r.headers["www-authenticate"].startswith("Bearer"), why

            no_role = bearer(token(private, issuer, vitalab_role="superuser"))
            assert_problem(await http.get("/v1/devices", headers=no_role), 403)
            kiosk_everywhere = bearer(token(private, issuer, vitalab_role="kiosk", vitalab_scope=["*"]))
            assert_problem(await http.get("/v1/check-ins", headers=kiosk_everywhere), 403)
    with psycopg.connect(database_url) as conn:
        subjects = conn.execute(
            "SELECT DISTINCT subject, role FROM audit_log WHERE action = 'GET /v1/sessions'"
        ).fetchall()
        expired = conn.execute(
            "SELECT count(*) FROM audit_log WHERE outcome = '401 expired token'"
        ).fetchone()
    assert subjects == [("alice@uni.example", "operator")]
    assert expired == (1,)


def _hmac(claims: dict[str, Any], secret: bytes) -> str:
    import base64
    import hashlib
    import hmac as hmac_lib

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    head = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": KID}).encode())
    body = b64(json.dumps(claims).encode())
    signature = hmac_lib.new(secret, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(signature)}"


async def test_an_issuer_without_an_audience_is_a_configuration_error(database_url: str) -> None:
    from vitalab.errors import ConfigError

    with pytest.raises(ConfigError, match="oidc_audience"):
        app_at(database_url, NOW, oidc_issuer="https://idp.example")
