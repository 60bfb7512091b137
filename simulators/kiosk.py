"""The simulated check-in kiosk of a :class:`simulators.gymfleet.GymPlan`, talking to the HTTP API as a real
kiosk or front desk would.

It registers every member once as a pseudonymous participant (``POST /v1/participants`` with the member id
as the site's ``external_ref``, birth year, sex, weight, HRrest/HRmax and consent; no name), pairs each
member's own strap with its owner (an open-ended check-in on the strap from the start of the simulated
period: the strap is theirs), then checks members in and out of machines for the visits the plan marks as
checked in (:func:`stays`), on the gym's clock (:class:`GymClock`): a check-in that is already over when its
time comes (a backfill) is sent in one call with its end.

HTTP is not the MQTT at-least-once path, so every call is retried on connection errors, timeouts and 5xx
answers, and on 404 while the platform does not know the site or device yet (the ingester registers them
from the devices' retained meta), until ``retry_s`` has passed. Repeating a call is harmless: the API
answers 200 for a member already registered (same ``external_ref``) and for a check-in already recorded or
a member already checked in. A 409 (a check-in conflicting with stored ones, say from a run with another
seed) and a call that still fails after ``retry_s`` are logged and counted in :attr:`Kiosk.counts`; the gym
goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any, Self

import httpx

from simulators.errors import KioskError
from simulators.gymfleet import CHECK_IN_LEAD, CHECK_OUT_LAG, GymPlan
from simulators.publisher import stop_if_cancelled

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Stay:
    """A checked-in visit as the kiosk sees it: in at ``checked_in``, out at ``checked_out`` (``None``: the
    member is still in when the run ends and an open-ended run goes on without them checking out)."""

    member_id: str
    device_id: str
    checked_in: datetime
    checked_out: datetime | None


def stays(
    plan: GymPlan, start: datetime, end: datetime | None, *, close_at_end: bool = True
) -> Iterator[Stay]:
    """The checked-in visits overlapping ``[start, end)`` (``end=None``: for ever), by check-in time. A
    visit still going on at ``end`` is checked out at ``end`` with ``close_at_end`` (the simulation stops:
    everyone leaves), else left open (a live run continues it)."""
    day = plan.local_date(start)
    last = None if end is None else plan.local_date(end)
    while last is None or day <= last:
        for v in plan.day(day).visits:
            if v.end <= start or (end is not None and v.start >= end) or not plan.checked_in(v):
                continue
            out: datetime | None = v.end + CHECK_OUT_LAG
            if end is not None and out is not None and out > end:
                out = end if close_at_end else None
            yield Stay(v.member_id, v.device_id, v.start - CHECK_IN_LEAD, out)
        day += timedelta(days=1)


@dataclass(frozen=True, slots=True)
class GymClock:
    """Gym time ``anchor`` is the event loop's ``loop_t``; ``speed`` gym seconds pass per second."""

    anchor: datetime
    loop_t: float
    speed: float = 1.0

    @classmethod
    def starting_at(cls, anchor: datetime, speed: float = 1.0) -> GymClock:
        """Gym time ``anchor`` now (the running event loop's time), then ``speed`` gym seconds per second.
        The wall clock is never read: a real-time run passes the current time, a test a pinned one."""
        return cls(anchor, asyncio.get_running_loop().time(), speed)

    def now(self) -> datetime:
        return self.anchor + timedelta(seconds=(asyncio.get_running_loop().time() - self.loop_t) * self.speed)

    async def wait_until(self, t: datetime) -> None:
        delay = (
            self.loop_t + (t - self.anchor).total_seconds() / self.speed - asyncio.get_running_loop().time()
        )
        if delay > 0:
            await asyncio.sleep(delay)


class Kiosk:
    def __init__(
        self,
        api_url: str,
        plan: GymPlan,
        *,
        retry_s: float = 60.0,
        timeout_s: float = 10.0,
        transport: httpx.AsyncBaseTransport | None = None,
        api_key: str | None = None,
    ) -> None:
        """``api_key``: a kiosk key of the plan's site (sent as ``Authorization: Bearer``)."""
        self.plan = plan
        self.retry_s = retry_s
        self.participants: dict[str, str] = {}
        """member id -> participant uuid, once registered."""
        self.counts: Counter[str] = Counter()
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else None
        self._http = httpx.AsyncClient(
            base_url=api_url.rstrip("/"), timeout=timeout_s, transport=transport, headers=headers
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._http.aclose()

    # --- calls ----------------------------------------------------------------------------------------------
    async def _call(
        self, action: str, path: str, body: dict[str, Any], *, retry_s: float | None = None
    ) -> dict[str, Any] | None:
        """POST with retries (module docstring). The answer on 200/201; ``None`` on 409; raises
        :class:`KioskError` when refused otherwise or still failing after ``retry_s``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (self.retry_s if retry_s is None else retry_s)
        pause = 0.2
        while True:
            status: int | None = None
            try:
                r = await self._http.post(path, json=body)
                status, detail = r.status_code, r.text
                if status in (200, 201):
                    out: dict[str, Any] = r.json()
                    return out
                if status == 409:
                    logger.warning("kiosk %s: conflict: %s", action, detail)
                    self.counts["conflicts"] += 1
                    return None
                if status != 404 and status < 500:
                    raise KioskError(action, status, detail)
            except httpx.TransportError as exc:
                detail = f"{type(exc).__name__}: {exc}"
            if loop.time() + pause > deadline:
                raise KioskError(action, status, detail)
            self.counts["retries"] += 1
            await asyncio.sleep(pause)
            pause = min(pause * 2, 5.0)

    async def register(self, paired_from: datetime) -> dict[str, str]:
        """Every member as a participant (idempotent), and each strap paired with its owner from
        ``paired_from``. Returns member id -> participant uuid."""
        for m in self.plan.members:
            if m.member_id in self.participants:
                continue
            got = await self._call(
                f"register {m.member_id}",
                "/v1/participants",
                {
                    "site_id": self.plan.site,
                    "external_ref": m.member_id,
                    "birth_year": paired_from.year - m.age_y,
                    "sex": m.sex,
                    "weight_kg": m.weight_kg,
                    "hr_rest_bpm": m.hr_rest_bpm,
                    "hr_max_bpm": m.hr_max_bpm,
                    "consent_given_at": _iso(paired_from),
                },
            )
            if got is not None:
                self.participants[m.member_id] = str(got["participant_id"])
                self.counts["registered"] += 1
        for member_id, strap_id in self.plan.strap_of.items():
            pid = self.participants.get(member_id)
            if pid is None:
                continue
            body = {"device_id": strap_id, "participant_id": pid, "started_at": _iso(paired_from)}
            if await self._call(f"pair {strap_id}", "/v1/check-ins", body) is not None:
                self.counts["straps_paired"] += 1
        return dict(self.participants)

    async def check_in(self, stay: Stay, *, ended: datetime | None = None) -> None:
        pid = self.participants.get(stay.member_id)
        if pid is None:
            self.counts["unregistered"] += 1
            return
        body: dict[str, Any] = {
            "device_id": stay.device_id,
            "participant_id": pid,
            "started_at": _iso(stay.checked_in),
        }
        if ended is not None:
            body["ended_at"] = _iso(ended)
        if await self._call(f"check in {stay.member_id} on {stay.device_id}", "/v1/check-ins", body):
            self.counts["check_ins"] += 1

    async def check_out(
        self, stay: Stay, *, at: datetime | None = None, retry_s: float | None = None
    ) -> None:
        pid = self.participants.get(stay.member_id)
        at = at or stay.checked_out
        if pid is None or at is None:
            return
        body = {"ended_at": _iso(at), "participant_id": pid}
        path = f"/v1/check-ins/{stay.device_id}/end"
        if await self._call(f"check out {stay.member_id} from {stay.device_id}", path, body, retry_s=retry_s):
            self.counts["check_outs"] += 1

    # --- the run --------------------------------------------------------------------------------------------
    async def run(self, visits: Iterator[Stay], clock: GymClock) -> None:
        """Check members in and out when the gym's clock reaches each time (at once for times already
        past). A refused call is logged and skipped."""
        outs: list[tuple[datetime, int, Stay]] = []
        n = 0
        try:
            for stay in visits:
                stop_if_cancelled()
                while outs and outs[0][0] <= stay.checked_in:
                    await self._out(heapq.heappop(outs)[2], clock)
                await clock.wait_until(stay.checked_in)
                over = stay.checked_out is not None and clock.now() >= stay.checked_out
                try:
                    await self.check_in(stay, ended=stay.checked_out if over else None)
                except KioskError as exc:
                    logger.error("%s", exc)
                    self.counts["failed"] += 1
                    continue
                if not over and stay.checked_out is not None:
                    n += 1
                    heapq.heappush(outs, (stay.checked_out, n, stay))
            while outs:
                await self._out(heapq.heappop(outs)[2], clock)
        except asyncio.CancelledError:
            await self._close(outs, clock)
            raise
        logger.info("kiosk: %s", dict(self.counts))

    async def _close(self, outs: list[tuple[datetime, int, Stay]], clock: GymClock) -> None:
        """Stopped (Ctrl-C): whoever is checked in is checked out now, briefly, so that no check-in of the
        simulation stays open for ever (it would name the next anonymous users of the machine)."""
        now = clock.now().replace(microsecond=0)
        for _, _, stay in outs:
            if stay.checked_in < now:
                with contextlib.suppress(KioskError, httpx.HTTPError):
                    await self.check_out(stay, at=now, retry_s=1.0)
        logger.info("kiosk stopped: %s", dict(self.counts))

    async def _out(self, stay: Stay, clock: GymClock) -> None:
        assert stay.checked_out is not None
        await clock.wait_until(stay.checked_out)
        try:
            await self.check_out(stay)
        except KioskError as exc:
            logger.error("%s", exc)
            self.counts["failed"] += 1


def _iso(t: datetime) -> str:
    return t.astimezone(UTC).isoformat()
