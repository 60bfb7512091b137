"""Errors of the simulators."""

from __future__ import annotations


class SimulatorError(Exception):
    """Base class."""


class KioskError(SimulatorError):
    """The platform refused a kiosk call (or did not answer before the retry deadline)."""

    def __init__(self, action: str, status: int | None, detail: str) -> None:
        where = "no answer" if status is None else f"HTTP {status}"
        super().__init__(f"kiosk {action}: {where}: {detail}")
        self.action = action
        self.status = status
        self.detail = detail
