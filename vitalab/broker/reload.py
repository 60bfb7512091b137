"""Telling a running broker that its password and ACL files changed.

Mosquitto 2.0 rereads ``password_file`` and ``acl_file`` on SIGHUP and then disconnects every client
whose account is gone or whose password no longer matches (observed with 2.0.11: the revoked client's
connection is closed right after "Reloading config."); remaining clients get the new ACL.

- :class:`SignalReload`: the broker runs on this host under a pid we may signal.
- :class:`GenerationReload`: the broker runs elsewhere (another container) and only shares the state
  directory: bump a counter file that a watcher next to the broker turns into a SIGHUP
  (``deploy/mosquitto/run.sh``), which writes the counter it applied back to ``applied``.
- the embedded broker of ``vitalab up`` takes the accounts directly:
  :class:`vitalab.broker.amqtt_auth.LiveAccounts`.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from vitalab.broker.accounts import Accounts
from vitalab.broker.errors import ReloadError
from vitalab.broker.files import write_atomic

logger = logging.getLogger(__name__)

GENERATION_FILE = "generation"
APPLIED_FILE = "applied"


class Reloader(Protocol):
    def reload(self, accounts: Accounts) -> None:
        """Called after the files were replaced (under the store's lock)."""


class NoReload:
    """For a broker that is not running yet (it reads the files when it starts)."""

    def reload(self, accounts: Accounts) -> None:
        pass


class SignalReload:
    """SIGHUP to a broker process on this host (by pid, or the ``pid_file`` Mosquitto writes)."""

    def __init__(self, pid: int | None = None, *, pid_file: Path | None = None) -> None:
        if (pid is None) == (pid_file is None):
            raise ValueError("give exactly one of pid and pid_file")
        self._pid = pid
        self._pid_file = pid_file

    def _target(self) -> int:
        if self._pid is not None:
            return self._pid
        assert self._pid_file is not None
        try:
            return int(self._pid_file.read_text().strip())
        except (OSError, ValueError) as exc:
            raise ReloadError(f"cannot read a pid from {self._pid_file}: {exc}") from exc

    def reload(self, accounts: Accounts) -> None:
        pid = self._target()
        try:
            os.kill(pid, signal.SIGHUP)
        except OSError as exc:
            raise ReloadError(f"SIGHUP to pid {pid}: {exc.strerror}") from exc
        logger.info("broker (pid %d) told to reload %d accounts", pid, len(accounts))


def read_counter(path: Path) -> int:
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return 0
    return int(text) if text.isdigit() else 0


class GenerationReload:
    """Bump ``<state_dir>/generation``; a watcher beside the broker sends the SIGHUP and writes
    ``<state_dir>/applied``. With ``wait_s``, :meth:`reload` waits up to that long for the watcher."""

    def __init__(
        self,
        state_dir: Path,
        *,
        wait_s: float = 0.0,
        poll_s: float = 0.05,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.generation_path = state_dir / GENERATION_FILE
        self.applied_path = state_dir / APPLIED_FILE
        self._wait_s = wait_s
        self._poll_s = poll_s
        self._clock = clock

    def reload(self, accounts: Accounts) -> None:
        generation = read_counter(self.generation_path) + 1
        write_atomic(self.generation_path, f"{generation}\n", mode=0o644)
        logger.info("broker accounts generation %d (%d accounts)", generation, len(accounts))
        if self._wait_s > 0 and not self.wait_applied(generation, self._wait_s):
            logger.warning(
                "the broker has not applied generation %d within %.1f s (is deploy/mosquitto/run.sh up?)",
                generation,
                self._wait_s,
            )

    def wait_applied(self, generation: int, timeout_s: float) -> bool:
        deadline = self._clock() + timeout_s
        while read_counter(self.applied_path) < generation:
            if self._clock() >= deadline:
                return False
            time.sleep(self._poll_s)
        return True
