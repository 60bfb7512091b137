"""Single sign-on: bearer JWTs of an OpenID Connect issuer (``VITALAB_OIDC_ISSUER``).

A token is accepted when its signature verifies against the issuer's key set (JWKS, fetched and cached by
``jwt.PyJWKClient``; from ``VITALAB_OIDC_JWKS_URL`` or the issuer's discovery document), it names the issuer
and the audience (``VITALAB_OIDC_AUDIENCE``) and it has not expired by the API's clock. The role is the claim
``VITALAB_OIDC_ROLE_CLAIM`` (one of the roles), the scope the claim ``VITALAB_OIDC_SCOPE_CLAIM`` (a list, or a
space-separated string, of scope entries: ``*``, ``site:<id>``, ``study:<id>``); the caller's subject is
``sub``. A valid token without a usable role or scope belongs to a known person without access: 403.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime
from typing import Any, Final, Literal, cast

import httpx
import jwt

from api.security import ROLES, Caller, Role, Scope, check_role_scope
from vitalab.errors import ConfigError
from vitalab.settings import Settings

log = logging.getLogger(__name__)

ALGORITHMS: Final = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"]
"""Asymmetric signatures only: never ``none`` nor a shared-secret HMAC."""
LEEWAY_S: Final = 30.0
TokenFailure = Literal["invalid token", "expired token", "no role"]


class KeySetUnavailable(Exception):
    """The issuer's key set cannot be fetched (the issuer, not the caller, is at fault)."""


class OidcVerifier:
    def __init__(self, settings: Settings, jwks: jwt.PyJWKClient | None = None) -> None:
        if settings.oidc_issuer is None:
            raise ConfigError("oidc_issuer", "not set")
        if not settings.oidc_audience:
            raise ConfigError("oidc_audience", "must be set with oidc_issuer (the tokens' `aud`)")
        self.issuer = settings.oidc_issuer
        self.audience = settings.oidc_audience
        self.role_claim = settings.oidc_role_claim
        self.scope_claim = settings.oidc_scope_claim
        self._jwks_url = settings.oidc_jwks_url
        self._jwks = jwks
        self._lock = asyncio.Lock()

    async def _client(self) -> jwt.PyJWKClient:
        if self._jwks is None:
            async with self._lock:
                if self._jwks is None:
                    url = self._jwks_url or await self._discover()
                    self._jwks = jwt.PyJWKClient(url, cache_keys=True, lifespan=300, timeout=5)
        return self._jwks

    async def _discover(self) -> str:
        where = self.issuer.rstrip("/") + "/.well-known/openid-configuration"
        try:
            async with httpx.AsyncClient(timeout=5.0) as http:
                r = await http.get(where)
                r.raise_for_status()
                url = r.json()["jwks_uri"]
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
            raise KeySetUnavailable(f"no jwks_uri from {where}: {exc}") from exc
        if not isinstance(url, str):
            raise KeySetUnavailable(f"no jwks_uri from {where}")
        return url

    async def verify(self, token: str, now: datetime, address: str | None) -> Caller | TokenFailure:
        """The caller a token stands for, or why not; :class:`KeySetUnavailable` when the key set cannot be
        fetched."""
        client = await self._client()
        try:
            # PyJWKClient fetches with urllib (blocking): off the event loop
            key = await asyncio.to_thread(client.get_signing_key_from_jwt, token)
        except jwt.PyJWKClientConnectionError as exc:
            raise KeySetUnavailable(str(exc)) from exc
        except (jwt.PyJWKClientError, jwt.PyJWKError, jwt.PyJWTError) as exc:
            log.info("token refused: %s", exc)
            return "invalid token"
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key.key,
                algorithms=ALGORITHMS,
                audience=self.audience,
                issuer=self.issuer,
                # times are checked below against the API's clock, not the wall clock of the library
                options={
                    "require": ["exp", "iss", "aud", "sub"],
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                },
            )
        except jwt.PyJWTError as exc:
            log.info("token refused: %s", exc)
            return "invalid token"
        t = now.timestamp()
        exp, nbf = claims.get("exp"), claims.get("nbf")
        if not isinstance(exp, int | float) or isinstance(exp, bool):
            return "invalid token"
        if exp <= t - LEEWAY_S:
            return "expired token"
        if nbf is not None and (not isinstance(nbf, int | float) or nbf > t + LEEWAY_S):
            return "invalid token"
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub:
            return "invalid token"
        role = claims.get(self.role_claim)
        if role not in ROLES:
            return "no role"
        scope = self._scope(cast(Role, role), claims.get(self.scope_claim))
        if scope is None:
            return "no role"
        return Caller(
            role=cast(Role, role),
            key_id=None,
            subject=sub,
            sites=scope.sites,
            studies=scope.studies,
            address=address,
        )

    @staticmethod
    def _scope(role: Role, claim: object) -> Scope | None:
        if role == "admin":
            return Scope.everything()
        entries: list[str]
        if claim is None:
            entries = []
        elif isinstance(claim, str):
            entries = claim.split()
        elif isinstance(claim, list) and all(isinstance(e, str) for e in claim):
            entries = list(claim)
        else:
            return None
        try:
            scope = Scope.parse(entries)
            check_role_scope(role, scope)
        except ValueError:
            return None
        return scope
