"""Running the real ``vitalab`` command in a child process, as a user would."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from tests.conftest import REPO


def env(data_dir: Path, **settings: str) -> dict[str, str]:
    """A child's environment: no ``VITALAB_*`` of the caller's, ``settings`` and a data dir of its own."""
    out = {k: v for k, v in os.environ.items() if not k.startswith("VITALAB_")}
    out["VITALAB_DATA_DIR"] = str(data_dir)
    out.update(settings)
    return out


def vitalab(
    *args: str,
    data_dir: Path,
    timeout_s: float = 120,
    stdin: str | None = None,
    settings: dict[str, str] | None = None,
    **more_settings: str,
) -> subprocess.CompletedProcess[str]:
    """``vitalab *args`` with ``VITALAB_*`` variables from ``settings`` and ``more_settings``."""
    return subprocess.run(
        [sys.executable, "-m", "vitalab", *args],
        env=env(data_dir, **(settings or {}), **more_settings),
        capture_output=True,
        text=True,
        timeout=timeout_s,
        input=stdin,
        cwd=REPO,
        check=False,
    )


def said(proc: subprocess.CompletedProcess[str]) -> list[str]:
    """What the command said on stderr, log lines (JSON objects) left out."""
    return [line for line in proc.stderr.splitlines() if line.strip() and not line.startswith("{")]


def one_line_failure(proc: subprocess.CompletedProcess[str], command: str, exit_code: int) -> str:
    """The command failed with ``exit_code``, one line naming it on stderr and no traceback; that line."""
    assert proc.returncode == exit_code, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = said(proc)
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"vitalab {command}: "), lines[0]
    return lines[0]


@contextlib.contextmanager
def private_dir() -> Iterator[Path]:
    """A data dir for an embedded PostgreSQL. Not under pytest's temp root: run as root the server runs as
    another user, and another pytest session on the machine makes that root private again (0700)."""
    path = Path(tempfile.mkdtemp(prefix="vitalab-cli-test-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
