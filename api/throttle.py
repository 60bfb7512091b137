"""Failed authentications slowed down per client address: a sliding window in memory (per API process).

After ``limit`` failures from one address within ``window`` seconds, every request of that address that needs
a credential answers 429 with ``Retry-After`` (whether its credential is right or not, so guessing gains
nothing) until the oldest failure leaves the window. The clock is the caller's (``now`` arguments)."""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from datetime import datetime


class FailureThrottle:
    def __init__(self, limit: int, window_s: float, max_addresses: int = 100_000) -> None:
        self.limit = limit
        self.window_s = window_s
        self.max_addresses = max_addresses
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def _recent(self, address: str, t: float) -> deque[float] | None:
        q = self._failures.get(address)
        if q is None:
            return None
        while q and q[0] <= t - self.window_s:
            q.popleft()
        if not q:
            del self._failures[address]
            return None
        return q

    def retry_after(self, address: str, now: datetime) -> int | None:
        """Seconds the address must wait before its next attempt counts, or None if it may try now."""
        t = now.timestamp()
        q = self._recent(address, t)
        if q is None or len(q) < self.limit:
            return None
        return max(1, math.ceil(q[0] + self.window_s - t))

    def failed(self, address: str, now: datetime) -> None:
        t = now.timestamp()
        q = self._recent(address, t)
        if q is None:
            q = self._failures[address] = deque()
            while len(self._failures) > self.max_addresses:  # the least recently failing address goes
                self._failures.popitem(last=False)
        else:
            self._failures.move_to_end(address)
        q.append(t)
