"""What a command says when it cannot do its work: one line and an exit status for the failures a user can
act on (a service that cannot be reached or refuses, a wrong URL or setting, a refused kiosk call); anything
else is a bug and keeps its traceback. Part of the composition root (it knows every service's errors)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiomqtt
import httpx
import psycopg
from pydantic import ValidationError

from gateway.errors import DeviceListError, TransportUnavailable
from simulators.errors import SimulatorError
from vitalab.errors import ConfigError, VitalabError

USAGE = 2
"""Exit status of a wrong setting, option or URL (as click does for a wrong option)."""
FAILED = 1
"""Exit status of a service that could not be reached or refused the work."""
INTERRUPTED = 130


class Unreachable(VitalabError):
    """A service a command needs did not answer (the broker, the database, the HTTP API)."""

    def __init__(self, service: str, url: str, detail: str) -> None:
        super().__init__(f"cannot reach {service} at {url}: {detail}")
        self.service = service
        self.url = url
        self.detail = detail


class NotRunning(VitalabError):
    """A service the command uses but does not start is not running (the embedded database for ``db url``)."""


@dataclass(frozen=True, slots=True)
class Failure:
    message: str
    exit_code: int


def one_line(text: str) -> str:
    return " ".join(text.split())


def leaves(exc: BaseException) -> Iterator[BaseException]:
    """The exceptions inside (nested) exception groups, depth first; the exception itself otherwise."""
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            yield from leaves(inner)
    else:
        yield exc


def explain(exc: BaseException, *, mqtt_url: str | None = None) -> Failure | None:
    """The one-line account of ``exc`` (of the first explainable error in a group), or ``None`` for a bug.
    ``mqtt_url``: the broker the command talks to (without its password), named in broker errors."""
    for leaf in leaves(exc):
        failure = _explain(leaf, mqtt_url)
        if failure is not None:
            return failure
    return None


def settings_failure(exc: ValidationError) -> Failure:
    """A ``VITALAB_*`` variable pydantic refused, each problem named by its variable."""
    problems = []
    for error in exc.errors():
        name = "VITALAB_" + "_".join(str(part) for part in error["loc"]).upper()
        problems.append(f"{name}: {error['msg']}")
    return Failure("configuration: " + "; ".join(problems), USAGE)


def _explain(exc: BaseException, mqtt_url: str | None) -> Failure | None:
    text = one_line(str(exc)) or type(exc).__name__
    match exc:
        case ConfigError():
            return Failure(f"configuration: {text}", USAGE)
        case TransportUnavailable() | DeviceListError():  # a radio's extra not installed, a bad device list
            return Failure(text, USAGE)
        case ValidationError():
            return settings_failure(exc)
        case VitalabError() | SimulatorError():
            return Failure(text, FAILED)
        case psycopg.Error():
            return Failure(f"database: {text}", FAILED)
        case aiomqtt.MqttError():
            where = f" at {mqtt_url}" if mqtt_url else ""
            return Failure(f"MQTT broker{where}: {text}", FAILED)
        case httpx.HTTPError():
            return Failure(f"HTTP: {text}", FAILED)
        case subprocess.CalledProcessError():
            program = Path(str(exc.cmd[0] if isinstance(exc.cmd, list | tuple) else exc.cmd)).name
            detail = one_line(exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else "")
            said = f": {detail}" if detail else ""
            return Failure(f"{program} failed (exit status {exc.returncode}){said}", FAILED)
        case OSError():  # refused or unknown hosts, permissions, missing files, time-outs
            return Failure(text, FAILED)
    return None
