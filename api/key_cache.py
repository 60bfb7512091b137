"""Verified API keys kept for a few seconds, so that a busy client's requests do not each read its key.

A key verified against the database (:func:`api.keys.verify`) is kept, under the SHA-256 of the whole
presented token (a different secret never matches; the secret itself is not kept), for ``ttl_s`` seconds
(``VITALAB_API_KEY_CACHE_S``, default 10; 0 turns the cache off), and never past the key's own expiry.
Only successes are kept: a wrong, unknown, expired or revoked key is read from the database every time.

Revocation: a key revoked through this process (``POST /v1/keys/{id}/revoke``) is dropped from its cache at
once (:meth:`KeyCache.invalidate`). A key revoked elsewhere (another API worker, ``vitalab keys revoke``)
is still accepted by a process that verified it shortly before, for at most ``ttl_s`` seconds. The clock is
the caller's (``now`` arguments): the guard passes the app's clock.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Final

from api.security import Caller

MAX_ENTRIES: Final = 10_000


@dataclass(frozen=True, slots=True)
class _Entry:
    caller: Caller
    until: datetime


def _token_key(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class KeyCache:
    def __init__(self, ttl_s: float, max_entries: int = MAX_ENTRIES) -> None:
        self.ttl = timedelta(seconds=ttl_s)
        self.max_entries = max_entries
        self._entries: OrderedDict[bytes, _Entry] = OrderedDict()
        self.hits = 0

    @property
    def enabled(self) -> bool:
        return self.ttl > timedelta(0)

    def get(self, token: str, now: datetime, address: str | None) -> Caller | None:
        """The caller ``token`` was verified as within the last ``ttl_s`` (with this request's address),
        else None."""
        if not self.enabled:
            return None
        k = _token_key(token)
        entry = self._entries.get(k)
        if entry is None:
            return None
        if now >= entry.until:
            del self._entries[k]
            return None
        self._entries.move_to_end(k)
        self.hits += 1
        return replace(entry.caller, address=address)

    def put(self, token: str, caller: Caller, now: datetime, expires_at: datetime | None) -> None:
        """Keep a caller just verified from the database (until ``now + ttl_s``, or the key's expiry)."""
        if not self.enabled:
            return
        until = now + self.ttl
        if expires_at is not None:
            until = min(until, expires_at)
        k = _token_key(token)
        self._entries[k] = _Entry(caller, until)
        self._entries.move_to_end(k)
        while len(self._entries) > self.max_entries:  # the least recently used key goes
            self._entries.popitem(last=False)

    def invalidate(self, key_id: str) -> None:
        """Forget every kept token of ``key_id`` (it was revoked in this process)."""
        for k in [k for k, e in self._entries.items() if e.caller.key_id == key_id]:
            del self._entries[k]
