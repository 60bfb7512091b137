"""Who is calling: the :class:`Caller` every guarded route receives, and what a scope is.

A caller has one role and a scope: the sites and the studies it may see (``None``: all of them; an empty set:
none). API keys (:mod:`api.keys`) and single-sign-on tokens (:mod:`api.oidc`) both become a :class:`Caller`;
the guard (:mod:`api.guard`) authenticates every request that the policy (:mod:`api.policy`) does not leave
open, checks the role and the scope, and hands the caller to the route through :data:`CallerDep`.

Scopes are written as entries: ``*`` (everything), ``site:<id>``, ``site:*``, ``study:<id>``, ``study:*``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Annotated, Final, Literal, get_args

from fastapi import Depends, Request

from api.errors import Problem
from vitalab.wire.topics import ID_PATTERN

Role = Literal["admin", "operator", "researcher", "integrator", "kiosk"]
ROLES: Final[tuple[Role, ...]] = get_args(Role)
CALLER_KEY: Final = "vitalab.caller"
"""Where the guard leaves the request's caller in the ASGI scope."""
_ID = re.compile(ID_PATTERN)


@dataclass(frozen=True, slots=True)
class Caller:
    """An authenticated caller. ``sites``/``studies`` None: all of them."""

    role: Role
    key_id: str | None
    subject: str | None
    sites: frozenset[str] | None
    studies: frozenset[str] | None
    address: str | None

    def can_site(self, site_id: str) -> bool:
        return self.sites is None or site_id in self.sites

    def can_study(self, study_id: str) -> bool:
        return self.studies is None or study_id in self.studies


@dataclass(frozen=True, slots=True)
class Scope:
    """What a key or token may see: sites and studies (``None``: all)."""

    sites: frozenset[str] | None
    studies: frozenset[str] | None

    @classmethod
    def everything(cls) -> Scope:
        return cls(None, None)

    @classmethod
    def parse(cls, entries: Iterable[str]) -> Scope:
        """The scope of entries such as ``site:gym-a``, ``study:s1``, ``site:*`` or ``*``; ValueError for
        anything else."""
        sites: set[str] | None = set()
        studies: set[str] | None = set()
        for raw in entries:
            entry = raw.strip()
            if not entry:
                continue
            if entry == "*":
                sites = studies = None
                continue
            kind, sep, value = entry.partition(":")
            if not sep or kind not in ("site", "study"):
                raise ValueError(f"scope entry {entry!r} is not `*`, `site:<id>` or `study:<id>`")
            if value != "*" and not _ID.fullmatch(value):
                raise ValueError(f"scope entry {entry!r}: {value!r} is not an id")
            if kind == "site":
                if sites is not None:
                    sites = None if value == "*" else sites | {value}
            elif studies is not None:
                studies = None if value == "*" else studies | {value}
        return cls(
            None if sites is None else frozenset(sites), None if studies is None else frozenset(studies)
        )

    def entries(self) -> list[str]:
        """The scope written as entries (the inverse of :meth:`parse`)."""
        if self.sites is None and self.studies is None:
            return ["*"]
        out = ["site:*"] if self.sites is None else [f"site:{s}" for s in sorted(self.sites)]
        out += ["study:*"] if self.studies is None else [f"study:{s}" for s in sorted(self.studies)]
        return out


def check_role_scope(role: Role, scope: Scope) -> None:
    """ValueError for a scope the role cannot have: an admin sees everything, a kiosk is at one site."""
    if role == "admin" and (scope.sites is not None or scope.studies is not None):
        raise ValueError("an admin key's scope is everything (`*`)")
    if role == "kiosk" and (scope.sites is None or len(scope.sites) != 1):
        raise ValueError("a kiosk key is for exactly one site (`site:<id>`)")


async def current_caller(request: Request) -> Caller:
    """The request's caller, authenticated by the guard (401 on a route the guard leaves open)."""
    caller = request.scope.get(CALLER_KEY)
    if not isinstance(caller, Caller):
        raise Problem(401, "this route needs a credential")
    return caller


CallerDep = Annotated[Caller, Depends(current_caller)]


def scope_sites(caller: Caller) -> list[str] | None:
    """The caller's sites as a query parameter (None: all)."""
    return None if caller.sites is None else sorted(caller.sites)
