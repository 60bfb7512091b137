"""The broker's account store: accounts in a JSON state file (hashes only), rendered to Mosquitto's
password and ACL files, then the broker is told to reload.

Every change runs under an exclusive ``flock`` on ``<state_dir>/.lock`` (several API workers or
processes may issue credentials at once): read the state, change it, write the state, ``passwd`` and
``acl`` atomically (temporary file + ``os.replace``, mode 0600), reload. A secret is generated here, hashed,
returned once in :class:`IssuedCredential` and never stored.

Files in ``state_dir``:

| file            | what                                                    |
|-----------------|---------------------------------------------------------|
| ``accounts.json`` | the accounts (role, site(s), attached devices, hash)  |
| ``passwd``      | Mosquitto ``password_file``                             |
| ``acl``         | Mosquitto ``acl_file``                                  |
| ``.lock``       | the lock file                                           |
| ``generation``/``applied`` | see :class:`vitalab.broker.reload.GenerationReload` |
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import msgspec

from vitalab.broker.accounts import (
    Account,
    Accounts,
    DeviceAccount,
    GatewayAccount,
    IngesterAccount,
    LiveViewAccount,
    MonitorAccount,
    Role,
    SimulatorAccount,
    role_of,
)
from vitalab.broker.acl import render_acl, render_passwd
from vitalab.broker.credentials import hash_password, new_secret
from vitalab.broker.errors import BrokerAuthError, InvalidAccount, StateFileError
from vitalab.broker.files import write_atomic
from vitalab.broker.reload import NoReload, Reloader

logger = logging.getLogger(__name__)

STATE_VERSION = 1
STATE_FILE = "accounts.json"
PASSWD_FILE = "passwd"
ACL_FILE = "acl"
LOCK_FILE = ".lock"

T = TypeVar("T")


class _State(msgspec.Struct, frozen=True, kw_only=True):
    version: int
    accounts: list[Account]


@dataclass(frozen=True, slots=True)
class IssuedCredential:
    """A new login, shown once: the password is not stored anywhere (only its hash)."""

    username: str
    role: Role
    password: str = field(repr=False)


def decode_state(raw: bytes, where: str = STATE_FILE) -> Accounts:
    try:
        state = msgspec.json.decode(raw, type=_State)
    except msgspec.ValidationError as exc:
        raise StateFileError(where, f"not an account state file: {exc}") from None
    except msgspec.DecodeError as exc:
        raise StateFileError(where, f"not JSON: {exc}") from None
    if state.version != STATE_VERSION:
        raise StateFileError(where, f"state version {state.version}, this vitalab reads {STATE_VERSION}")
    try:
        return Accounts(state.accounts)
    except BrokerAuthError as exc:
        raise StateFileError(where, str(exc)) from None


def encode_state(accounts: Accounts) -> bytes:
    return msgspec.json.format(msgspec.json.encode(_State(version=STATE_VERSION, accounts=list(accounts))))


def _service(
    role: Role, username: str, password_hash: str, *, sites: Iterable[str] | None, site: str | None
) -> Account:
    scope = None if sites is None else frozenset(sites)
    if role is Role.INGESTER:
        return IngesterAccount(username=username, password_hash=password_hash, sites=scope)
    if role is Role.LIVE_VIEW:
        return LiveViewAccount(username=username, password_hash=password_hash, sites=scope)
    if role is Role.MONITOR:
        return MonitorAccount(username=username, password_hash=password_hash)
    if role is Role.SIMULATOR:
        if site is None:
            raise InvalidAccount(username, "a simulator account is bound to one site")
        return SimulatorAccount(username=username, site=site, password_hash=password_hash)
    raise InvalidAccount(username, f"{role.value} is not a service role")


class MosquittoAuth:
    """Issue, rotate and revoke broker credentials; keep Mosquitto's files and the broker in step."""

    def __init__(
        self,
        state_dir: Path,
        reloader: Reloader | None = None,
        *,
        secret: Callable[[], str] = new_secret,
    ) -> None:
        self.state_dir = state_dir
        self.reloader: Reloader = reloader or NoReload()
        self._secret = secret
        state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)

    @property
    def state_path(self) -> Path:
        return self.state_dir / STATE_FILE

    @property
    def passwd_path(self) -> Path:
        return self.state_dir / PASSWD_FILE

    @property
    def acl_path(self) -> Path:
        return self.state_dir / ACL_FILE

    # --- locking and persistence -----------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self, exclusive: bool) -> Iterator[None]:
        fd = os.open(self.state_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            yield
        finally:
            os.close(fd)  # releases the lock

    def _load(self) -> Accounts:
        try:
            raw = self.state_path.read_bytes()
        except FileNotFoundError:
            return Accounts()
        return decode_state(raw, str(self.state_path))

    def _save(self, accounts: Accounts) -> None:
        # the files the broker reads first, the state last: a crash in between leaves the broker's view
        # and the state one change apart at worst, and `apply()` (run at every start) re-renders them
        write_atomic(self.passwd_path, render_passwd(accounts))
        write_atomic(self.acl_path, render_acl(accounts))
        write_atomic(self.state_path, encode_state(accounts))
        self.reloader.reload(accounts)

    def _change(self, change: Callable[[Accounts], tuple[Accounts, T]]) -> T:
        with self._locked(exclusive=True):
            before = self._load()
            after, result = change(before)
            self._save(after)
            return result

    def accounts(self) -> Accounts:
        with self._locked(exclusive=False):
            return self._load()

    def apply(self) -> Accounts:
        """Re-render ``passwd`` and ``acl`` from the state and reload (at start-up, or after a crash)."""
        return self._change(lambda accounts: (accounts, accounts))

    def replace_all(self, accounts: Accounts) -> None:
        """Make the store hold exactly ``accounts`` (e.g. rebuilt from the database)."""
        self._change(lambda _old: (accounts, None))

    # --- issuing -----------------------------------------------------------------------------------------

    def _issue(self, make: Callable[[str], Account]) -> IssuedCredential:
        secret = self._secret()
        account = make(hash_password(secret))

        def change(accounts: Accounts) -> tuple[Accounts, IssuedCredential]:
            return accounts.with_account(account), IssuedCredential(
                account.username, role_of(account), secret
            )

        issued = self._change(change)
        logger.info("broker account %s (%s) issued", issued.username, issued.role.value)
        return issued

    def add_device(self, device_id: str, site: str) -> IssuedCredential:
        """A device's own login (username = device id), bound to ``site``."""
        return self._issue(lambda h: DeviceAccount(username=device_id, site=site, password_hash=h))

    def add_gateway(self, gateway_id: str, site: str, devices: Iterable[str] = ()) -> IssuedCredential:
        return self._issue(
            lambda h: GatewayAccount(
                username=gateway_id, site=site, devices=frozenset(devices), password_hash=h
            )
        )

    def add_service(
        self,
        role: Role,
        username: str,
        *,
        sites: Iterable[str] | None = None,
        site: str | None = None,
    ) -> IssuedCredential:
        """A platform account: ingester or live-view (``sites``; ``None`` = all), monitor, or simulator
        (one ``site``)."""
        return self._issue(lambda h: _service(role, username, h, sites=sites, site=site))

    def issue_service(
        self,
        role: Role,
        username: str,
        *,
        sites: Iterable[str] | None = None,
        site: str | None = None,
    ) -> IssuedCredential:
        """Like :meth:`add_service`, but an existing account of that name and role gets a fresh password
        (and the given scope): for in-process clients that hold their password only in memory
        (``vitalab up`` issues its ingester a new one at every start)."""
        return self._upsert(lambda h: _service(role, username, h, sites=sites, site=site))

    def issue_gateway(self, gateway_id: str, site: str, devices: Iterable[str]) -> IssuedCredential:
        """A gateway account with exactly these devices, new or with a fresh password (simulated gateways
        of ``vitalab up``)."""
        attached = frozenset(devices)
        return self._upsert(
            lambda h: GatewayAccount(username=gateway_id, site=site, devices=attached, password_hash=h)
        )

    def _upsert(self, make: Callable[[str], Account]) -> IssuedCredential:
        secret = self._secret()
        account = make(hash_password(secret))

        def change(accounts: Accounts) -> tuple[Accounts, IssuedCredential]:
            exists = account.username in accounts
            updated = accounts.replacing(account) if exists else accounts.with_account(account)
            return updated, IssuedCredential(account.username, role_of(account), secret)

        issued = self._change(change)
        logger.info("broker account %s (%s) issued", issued.username, issued.role.value)
        return issued

    def rotate(self, username: str) -> IssuedCredential:
        """A new password for an existing account; the old one stops working at the reload."""
        secret = self._secret()
        encoded = hash_password(secret)

        def change(accounts: Accounts) -> tuple[Accounts, IssuedCredential]:
            current = accounts.require(username)
            rotated = msgspec.structs.replace(current, password_hash=encoded)
            return accounts.replacing(rotated), IssuedCredential(username, role_of(current), secret)

        issued = self._change(change)
        logger.info("broker account %s (%s) rotated", username, issued.role.value)
        return issued

    def revoke(self, username: str) -> None:
        """Remove the account: the broker refuses it and drops its connections at the reload."""
        self._change(lambda accounts: (accounts.without(username), None))
        logger.info("broker account %s revoked", username)

    # --- gateways ------------------------------------------------------------------------------------------

    def attach(self, gateway_id: str, devices: Iterable[str]) -> None:
        """Let the gateway publish for ``devices`` too (they join the gateway's site)."""
        added = frozenset(devices)

        def change(accounts: Accounts) -> tuple[Accounts, None]:
            gateway = accounts.require(gateway_id, GatewayAccount)
            assert isinstance(gateway, GatewayAccount)
            return accounts.replacing(msgspec.structs.replace(gateway, devices=gateway.devices | added)), None

        self._change(change)

    def detach(self, gateway_id: str, devices: Iterable[str]) -> None:
        removed = frozenset(devices)

        def change(accounts: Accounts) -> tuple[Accounts, None]:
            gateway = accounts.require(gateway_id, GatewayAccount)
            assert isinstance(gateway, GatewayAccount)
            return accounts.replacing(
                msgspec.structs.replace(gateway, devices=gateway.devices - removed)
            ), None

        self._change(change)
