"""Progress of long work (history publishing, a full analytics run): a progress bar when stderr is a
terminal, plain log lines otherwise (a service's journal, a CI log, a pipe).

The work reports ``(done, total)`` through :meth:`Meter.update`; it knows nothing about the display. Part of
the composition root: the services take a plain callback.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from types import TracebackType
from typing import Self, TextIO

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TaskProgressColumn, TextColumn, TimeRemainingColumn

logger = logging.getLogger(__name__)

LOG_EVERY_S = 10.0
"""Without a terminal: at most one progress line per this many seconds (and one at the end)."""


class Meter:
    """One piece of long work. ``unit`` names what ``done``/``total`` count, ``scale`` converts them for
    display (e.g. seconds of history shown in hours: ``scale=1/3600, unit="h"``), shown with ``decimals``.
    ``interactive``: draw a bar (default: when ``stream`` is a terminal); else log a line at the first
    update, then at most every ``log_every_s`` seconds of ``clock``, and one when the work is complete."""

    def __init__(
        self,
        description: str,
        *,
        unit: str = "",
        scale: float = 1.0,
        decimals: int = 1,
        stream: TextIO | None = None,
        interactive: bool | None = None,
        log_every_s: float = LOG_EVERY_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.description = description
        self.unit = unit
        self.scale = scale
        self.decimals = decimals
        self._stream = stream if stream is not None else sys.stderr
        self.interactive = self._stream.isatty() if interactive is None else interactive
        self._log_every_s = log_every_s
        self._clock = clock
        self._last_log: float | None = None
        self._completed = False
        self._bar: Progress | None = None
        self._task: TaskID | None = None
        self._handlers: list[tuple[logging.StreamHandler[TextIO], TextIO]] = []

    def __enter__(self) -> Self:
        if self.interactive:
            stderr = sys.stderr
            self._bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                TaskProgressColumn(),
                TextColumn("{task.fields[amount]}"),
                TimeRemainingColumn(),
                console=Console(file=self._stream),
                redirect_stderr=self._stream is stderr,
                redirect_stdout=False,
            )
            self._bar.start()
            self._task = self._bar.add_task(self.description, total=None, amount="")
            if sys.stderr is not stderr:  # redirected: log lines go through the bar's console, above it
                self._route_logs(stderr, sys.stderr)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._bar is not None:
            for handler, stream in self._handlers:
                handler.setStream(stream)
            self._bar.stop()

    @classmethod
    def history(cls, seconds: float) -> Meter:
        """``seconds`` of simulated history to publish, shown in hours, minutes or seconds."""
        if seconds >= 7200:
            return cls("history", unit="h", scale=1 / 3600)
        if seconds >= 120:
            return cls("history", unit="min", scale=1 / 60, decimals=0)
        return cls("history", unit="s", decimals=0)

    def reporter(self, total: float) -> Callable[[float], None]:
        """A callback for work that reports only what is done, of a known ``total``."""
        return lambda done: self.update(done, total)

    def update(self, done: float, total: float) -> None:
        """``done`` of ``total`` is finished."""
        shown_done, shown_total = done * self.scale, total * self.scale
        unit = f" {self.unit}" if self.unit else ""
        amount = f"{shown_done:,.{self.decimals}f}/{shown_total:,.{self.decimals}f}{unit}"
        if self._bar is not None and self._task is not None:
            self._bar.update(self._task, completed=shown_done, total=shown_total, amount=amount)
            return
        now = self._clock()
        complete = total > 0 and done >= total
        if complete and self._completed:
            return
        if complete or self._last_log is None or now - self._last_log >= self._log_every_s:
            self._last_log = now
            self._completed = complete
            share = 100.0 * done / total if total > 0 else 0.0
            logger.info(
                "%s: %.0f %% (%s)", self.description, share, amount, extra={"done": done, "total": total}
            )

    def _route_logs(self, stderr: TextIO, proxy: TextIO) -> None:
        """The log handlers were made before the bar replaced ``sys.stderr``: point those writing to it at
        the replacement while the bar is drawn."""
        for handler in logging.getLogger().handlers:
            if isinstance(handler, logging.StreamHandler) and handler.stream is stderr:
                previous = handler.setStream(proxy)
                if previous is not None:
                    self._handlers.append((handler, previous))
