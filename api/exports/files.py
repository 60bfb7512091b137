"""Files of an export: written once, hashed while written, fsynced on close.

:class:`HashingFile` counts and hashes (SHA-256) every byte written to it, so a writer's checksum costs no
second read; ``close()`` flushes and fsyncs.
"""

from __future__ import annotations

import hashlib
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from typing_extensions import Buffer

Chunk = bytes | bytearray | memoryview
"""A piece of a byte stream (what ``COPY ... TO STDOUT`` yields)."""


@dataclass(frozen=True, slots=True)
class FileResult:
    """A finished file: its name in the export, rows (data lines; None for files without rows), size and
    SHA-256."""

    name: str
    dataset: str | None
    media_type: str
    rows: int | None
    bytes: int
    sha256: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "dataset": self.dataset,
            "media_type": self.media_type,
            "rows": self.rows,
            "bytes": self.bytes,
            "sha256": self.sha256,
        }


class HashingFile(io.RawIOBase):
    """A new file at ``path`` (refused if it exists) whose bytes are counted and hashed as written."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        self._hash = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Buffer) -> int:
        view = memoryview(data).cast("B")
        done = 0
        while done < len(view):
            done += os.write(self._fd, view[done:])
        self._hash.update(view)
        self.size += len(view)
        return len(view)

    def tell(self) -> int:
        return self.size

    def close(self) -> None:
        if not self.closed:
            try:
                os.fsync(self._fd)
            finally:
                os.close(self._fd)
        super().close()

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()


def fsync_dir(path: Path) -> None:
    """Make the entries of directory ``path`` (new files, renames) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
