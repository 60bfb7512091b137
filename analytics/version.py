"""The version of the analytics' conventions, stored next to every session summary and daily row.

Its own module so that readers of stored results (the HTTP API) know the current version without importing
the metric code (NumPy/SciPy)."""

from __future__ import annotations

from typing import Final

ALGORITHM_VERSION: Final[str] = "2026.12.1"
"""Bump when any metric's convention changes (stored next to every summary).
2026.12.1: a strap joins the machine session it coincides with best (overlap, start, end, heart rate)."""
