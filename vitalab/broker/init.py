"""First start of a deployment: the platform's service accounts, their client files, a TLS certificate.

Run by the compose stack's ``broker-init`` job before the broker starts (``python -m vitalab.broker
init``) and idempotent: an account whose client file is present and still matches keeps its password;
a missing or stale client file gets a fresh password (the old one stops working at the reload).

Client files (``<clients_dir>/<username>.url`` = ``mqtt://user:secret@host:port`` and
``<username>.password``, mode 0600) are how the stack's own containers learn their credentials; no
secret is part of the repository.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from vitalab.broker.accounts import Role, role_of
from vitalab.broker.credentials import verify_password
from vitalab.broker.errors import InvalidAccount
from vitalab.broker.files import write_atomic
from vitalab.broker.store import IssuedCredential, MosquittoAuth

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ServiceSpec:
    """``ingest=ingester``, ``api=live-view@gym-a,gym-b``, ``monitor=monitor``, ``sim=simulator@demo``."""

    username: str
    role: Role
    sites: frozenset[str] | None = None

    @classmethod
    def parse(cls, text: str) -> ServiceSpec:
        username, sep, rest = text.partition("=")
        role_s, _, sites_s = rest.partition("@")
        if not sep or not username:
            raise InvalidAccount(text, "expected username=role[@site,...]")
        try:
            role = Role(role_s)
        except ValueError:
            raise InvalidAccount(username, f"unknown role {role_s!r}") from None
        if role in (Role.DEVICE, Role.GATEWAY):
            raise InvalidAccount(username, f"{role.value} accounts are issued per device/gateway, not here")
        sites = frozenset(s for s in sites_s.split(",") if s) if sites_s else None
        if role is Role.SIMULATOR and (sites is None or len(sites) != 1):
            raise InvalidAccount(
                username, "a simulator account is bound to exactly one site: sim=simulator@<site>"
            )
        return cls(username, role, sites)


def client_url(credential: IssuedCredential, host: str, port: int, *, tls: bool = False) -> str:
    # the secrets are URL-safe (credentials.new_secret) and usernames are ids: no percent-encoding needed
    return f"{'mqtts' if tls else 'mqtt'}://{credential.username}:{credential.password}@{host}:{port}"


def _client_file_ok(auth_hash: str, password_file: Path, url_file: Path) -> bool:
    try:
        password = password_file.read_text().strip()
    except FileNotFoundError:
        return False
    return url_file.exists() and verify_password(password, auth_hash)


def init_services(
    auth: MosquittoAuth,
    clients_dir: Path,
    services: Sequence[ServiceSpec],
    *,
    host: str,
    port: int,
    tls: bool = False,
    rotate: Collection[str] = (),
) -> list[str]:
    """Make sure every service account exists with a matching client file; return the usernames that got
    a new password (also those named in ``rotate``). Re-renders the broker's files at the end (also when
    nothing changed)."""
    unknown = set(rotate) - {spec.username for spec in services}
    if unknown:
        raise InvalidAccount(sorted(unknown)[0], "only the service accounts given here can be rotated")
    clients_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    issued: list[str] = []
    for spec in services:
        current = auth.accounts().get(spec.username)
        url_file = clients_dir / f"{spec.username}.url"
        password_file = clients_dir / f"{spec.username}.password"
        if current is not None:
            if role_of(current) is not spec.role:
                raise InvalidAccount(
                    spec.username, f"exists as a {role_of(current).value}, not a {spec.role.value}"
                )
            if spec.username not in rotate and _client_file_ok(
                current.password_hash, password_file, url_file
            ):
                continue
            credential = auth.rotate(spec.username)
        elif spec.role is Role.SIMULATOR:
            assert spec.sites is not None
            (site,) = spec.sites
            credential = auth.add_service(spec.role, spec.username, site=site)
        else:
            credential = auth.add_service(spec.role, spec.username, sites=spec.sites)
        write_atomic(password_file, credential.password + "\n")
        write_atomic(url_file, client_url(credential, host, port, tls=tls) + "\n")
        issued.append(spec.username)
        logger.info(
            "service account %s (%s): new credentials in %s", spec.username, spec.role.value, url_file
        )
    auth.apply()
    return issued


def chown_tree(paths: Iterable[Path], uid: int, gid: int) -> None:
    """Give ``paths`` and everything below them to ``uid:gid`` (the broker and the vitalab image share
    uid 10001 in the compose stack, so both can use the account files at mode 0600)."""
    for root in paths:
        os.chown(root, uid, gid)
        for dirpath, dirnames, filenames in os.walk(root):
            for name in [*dirnames, *filenames]:
                os.chown(os.path.join(dirpath, name), uid, gid, follow_symlinks=False)
