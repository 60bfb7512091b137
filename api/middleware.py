"""Request guards that hold for every route, mounts included."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from urllib.parse import parse_qsl

from starlette.routing import compile_path
from starlette.types import ASGIApp, Receive, Scope, Send

from api.errors import invalid, response


class RejectNul:
    """422 (problem details naming the parameter) for a NUL character in the path or the query string:
    PostgreSQL cannot store one, and no identifier or filter of the API contains one."""

    def __init__(self, app: ASGIApp, templates: Callable[[], Iterable[str]]) -> None:
        """``templates`` gives the path templates (``/v1/devices/{device_id}``) that name path parameters."""
        self.app = app
        self.templates = templates
        self._compiled: list[re.Pattern[str]] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            field = self._offending(scope)
            if field is not None:
                shown = field.replace("\x00", "\\0")
                problem = invalid(shown, f"{shown} contains a NUL character")
                instance = str(scope.get("path", "")).replace("\x00", "\\0")
                await response(problem, instance=instance)(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def _offending(self, scope: Scope) -> str | None:
        query = scope.get("query_string", b"").decode("latin-1")
        if "%00" in query or "\x00" in query:
            for name, value in parse_qsl(query, keep_blank_values=True):
                if "\x00" in name or "\x00" in value:
                    return f"query.{name}"
        path: str = scope.get("path", "")
        if "\x00" in path:
            if self._compiled is None:
                self._compiled = [compile_path(t)[0] for t in self.templates()]
            for regex in self._compiled:
                match = regex.match(path)
                if match is not None:
                    for name, value in match.groupdict().items():
                        if "\x00" in value:
                            return f"path.{name}"
            return "path"
        return None
