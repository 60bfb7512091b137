"""Atomic file replacement: write a temporary file in the same directory, fsync, ``os.replace``."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def _owner(path: Path) -> tuple[int, int]:
    """The owner the new file should have: the old file's, else its directory's."""
    try:
        st = path.stat()
    except FileNotFoundError:
        st = path.parent.stat()
    return st.st_uid, st.st_gid


def write_atomic(path: Path, data: str | bytes, *, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data`` so that readers see the old or the new content, never a mix.

    Run as root (an operator's ``docker compose run``), the file keeps its owner (or takes its
    directory's): a 0600 file the broker reads must not become root's."""
    raw = data.encode("utf-8") if isinstance(data, str) else data
    owner = _owner(path) if os.geteuid() == 0 else None
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), mode)
            if owner is not None:
                os.fchown(fh.fileno(), *owner)
            fh.write(raw)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
