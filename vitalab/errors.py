"""Errors of the shared package. Each carries fields, not only a message."""

from __future__ import annotations


class VitalabError(Exception):
    """Base of every error vitalab raises on purpose."""


class ConfigError(VitalabError):
    def __init__(self, setting: str, detail: str) -> None:
        super().__init__(f"{setting}: {detail}")
        self.setting = setting
        self.detail = detail


class MigrationError(VitalabError):
    def __init__(self, version: int, name: str, detail: str) -> None:
        super().__init__(f"migration {version:04d}_{name}: {detail}")
        self.version = version
        self.name = name
        self.detail = detail
