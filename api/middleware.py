"""Request guards that hold for every route, mounts included."""

from __future__ import annotations

from urllib.parse import parse_qsl

from starlette.routing import Match, Router
from starlette.types import ASGIApp, Receive, Scope, Send

from api.errors import invalid, response


class RejectNul:
    """422 (problem details naming the parameter) for a NUL character in the path or the query string:
    PostgreSQL cannot store one, and no identifier or filter of the API contains one."""

    def __init__(self, app: ASGIApp, router: Router) -> None:
        self.app = app
        self.router = router

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            field = self._offending(scope)
            if field is not None:
                shown = field.replace("\x00", "\\0")
                problem = invalid(shown, f"{shown} contains a NUL character")
                await response(problem)(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def _offending(self, scope: Scope) -> str | None:
        query = scope.get("query_string", b"").decode("latin-1")
        if "%00" in query or "\x00" in query:
            for name, value in parse_qsl(query, keep_blank_values=True):
                if "\x00" in name or "\x00" in value:
                    return f"query.{name}"
        if "\x00" in scope.get("path", ""):
            for route in self.router.routes:
                match, child = route.matches(scope)
                if match is Match.FULL:
                    for name, value in child.get("path_params", {}).items():
                        if isinstance(value, str) and "\x00" in value:
                            return f"path.{name}"
            return "path"
        return None
