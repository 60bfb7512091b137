"""Typed errors of the broker-credential layer. Each carries the fields a caller needs for an answer
(an API maps :class:`AccountExists` to 409, :class:`UnknownAccount` to 404, :class:`InvalidAccount`
to 422)."""

from __future__ import annotations

from vitalab.errors import VitalabError


class BrokerAuthError(VitalabError):
    """Base of the errors of :mod:`vitalab.broker`."""


class PasswordHashError(BrokerAuthError):
    """A password-file hash that is not Mosquitto's ``$7$`` PBKDF2-SHA512 format (or is malformed)."""

    def __init__(self, detail: str) -> None:
        super().__init__(f"password hash: {detail}")
        self.detail = detail


class InvalidAccount(BrokerAuthError):
    """An account (or a set of accounts) that breaks a rule: bad id, a device in two sites, ..."""

    def __init__(self, username: str, detail: str) -> None:
        super().__init__(f"account {username!r}: {detail}")
        self.username = username
        self.detail = detail


class AccountExists(BrokerAuthError):
    """The username is taken (device ids, gateway ids and service names share one namespace)."""

    def __init__(self, username: str, role: str) -> None:
        super().__init__(f"username {username!r} is already taken by a {role} account")
        self.username = username
        self.role = role


class UnknownAccount(BrokerAuthError):
    def __init__(self, username: str, expected_role: str | None = None) -> None:
        what = f"{expected_role} account" if expected_role else "account"
        super().__init__(f"no {what} {username!r}")
        self.username = username
        self.expected_role = expected_role


class StateFileError(BrokerAuthError):
    """The account state file exists but cannot be read as accounts (corrupt, wrong version)."""

    def __init__(self, path: str, detail: str) -> None:
        super().__init__(f"{path}: {detail}")
        self.path = path
        self.detail = detail


class ReloadError(BrokerAuthError):
    """The broker could not be told to reload (no such process, no permission)."""

    def __init__(self, detail: str) -> None:
        super().__init__(f"broker reload: {detail}")
        self.detail = detail
