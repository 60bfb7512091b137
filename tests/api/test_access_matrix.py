"""The authorisation matrix: every route of the application × every role × in scope / out of scope, and every
route × no credential / a wrong, revoked or expired key, each cell with its expected status; zero leaks.

The expectations are written here by hand from the roles' definitions (issue 11), not taken from
api/policy.py: ``MAY`` lists, per role, the routes it may call. Two sites: gym-a (every scoped key's site) and
gym-b (out of everyone's scope but the admin's), each with a device, a participant, a session, a check-in and
a dead letter. A request out of scope names gym-b's resources; it must answer 404 exactly like an unknown
resource (the same body but for the id). Lists asked for without a filter must hold nothing of gym-b for a
scoped caller (while the admin's show gym-b: the data is there to leak), and operators never see a participant
id. The walk fails when the app has a route this module does not know how to call."""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx
import psycopg
import pytest
from psycopg.types.json import Jsonb

from analytics.version import ALGORITHM_VERSION
from api import keys, policy
from api.exports.pseudonyms import pseudonym
from api.security import Role, Scope
from tests.api.seed import NOW, PARTICIPANT, T0, seed
from tests.api.support import app_at, bearer, serve
from tests.support.helpers import make_key
from vitalab.broker import MosquittoAuth, NoReload

pytestmark = pytest.mark.asyncio

OTHER = UUID("7a1d0c3e-9b2f-4e61-8c5d-2f4b6a8e0d13")
"""A participant of gym-b."""
UNKNOWN_PARTICIPANT = "8f0e2a9c-0000-4000-8000-000000000000"

SITE_READS = {
    "GET /v1/sites/{site_id}/utilisation",
    "GET /v1/sites/{site_id}/occupancy",
    "GET /v1/sites/{site_id}/vitality",
}
DEVICE_READS = {"GET /v1/devices", "GET /v1/devices/{device_id}", "GET /v1/devices/{device_id}/quality"}
CONTRACT = {"GET /v1/contract/schema", "GET /v1/contract/asyncapi"}
"""The wire contract's documents: any authenticated caller."""
# --- sites and registration (devices on the broker) ---
SITE_INFO = {"GET /v1/sites", "GET /v1/sites/{site_id}"}
"""A site's name, timezone and opening hours: whoever works at it."""
REGISTRY_READS = {"GET /v1/sites/{site_id}/devices", "GET /v1/sites/{site_id}/gateways"}
REGISTRATION = {
    "POST /v1/sites/{site_id}/devices",
    "POST /v1/sites/{site_id}/devices/{device_id}/rotate",
    "POST /v1/sites/{site_id}/devices/{device_id}/retire",
    "POST /v1/sites/{site_id}/gateways",
    "POST /v1/sites/{site_id}/gateways/{gateway_id}/devices",
    "POST /v1/sites/{site_id}/gateways/{gateway_id}/rotate",
    "POST /v1/sites/{site_id}/gateways/{gateway_id}/retire",
}
"""Registering devices and gateways and getting their broker logins: integrators of the site."""
# --- end of sites and registration ---
# --- issue 13: the live floor (the dashboard page and its files are public: they hold no data) ---
LIVE = {"GET /v1/sites/{site_id}/live"}
DASHBOARD = {"GET /", "GET /static/dashboard/{path}"}
# --- end of issue 13 ---
FLEET_OPERATOR = {
    "GET /v1/sites/{site_id}/fleet",
    "GET /v1/sites/{site_id}/alerts",
    "GET /v1/sites/{site_id}/opening-hours",
    "POST /v1/devices/{device_id}/serviced",
    "GET /v1/service-thresholds",
}
"""Fleet health and maintenance: operators read their sites' fleet, alerts and opening hours and record
services; the settings behind the alerts (opening hours, thresholds, webhooks) are the admin's."""
SITE_EXPORTS = {
    "POST /v1/sites/{site_id}/exports",
    "GET /v1/sites/{site_id}/exports",
    "GET /v1/sites/{site_id}/exports/{export_id}",
    "GET /v1/sites/{site_id}/exports/{export_id}/files/{name}",
}
"""The site reports as files (utilisation, occupancy, suppressed vitality): operators of the site."""
MAY: dict[Role, set[str]] = {
    # their sites: devices, device health, utilisation, occupancy, sessions without participant identity,
    # suppressed vitality aggregates, the live floor
    "operator": DEVICE_READS
    | CONTRACT
    | SITE_READS
    | {"GET /v1/samples/latest", "GET /v1/sessions", "GET /v1/sessions/{session_id}"}
    | SITE_INFO
    | REGISTRY_READS
    | LIVE
    | FLEET_OPERATOR
    | SITE_EXPORTS,
    # their sites' devices and those devices' dead letters
    "integrator": DEVICE_READS
    | CONTRACT
    | {"GET /v1/dead-letters", "GET /v1/devices/{device_id}/dead-letters", "POST /v1/contract/validate"}
    | SITE_INFO
    | REGISTRY_READS
    | REGISTRATION,
    # one site: registering participants, check-ins
    "kiosk": CONTRACT
    | {
        "POST /v1/participants",
        "GET /v1/participants/{participant_id}",
        "POST /v1/check-ins",
        "POST /v1/check-ins/{device_id}/end",
        "GET /v1/check-ins",
    }
    | SITE_INFO,
    # their studies only (no raw device management, no internal ids): see the research block below
    "researcher": CONTRACT,
}
# --- research: studies, enrolment and consent, exports (issue 12) ------------------------------------------
STUDY_READS = {"GET /v1/studies", "GET /v1/studies/{study_id}"}
ENROLMENT_READS = {
    "GET /v1/studies/{study_id}/enrolments",
    "GET /v1/studies/{study_id}/enrolments/{pseudonym}/consents",
}
EXPORTS = {
    "POST /v1/studies/{study_id}/exports",
    "GET /v1/studies/{study_id}/exports",
    "GET /v1/studies/{study_id}/exports/{export_id}",
    "GET /v1/studies/{study_id}/exports/{export_id}/files/{name}",
}
DESK = {
    "POST /v1/studies/{study_id}/enrolments",
    "POST /v1/studies/{study_id}/participants/{participant_id}/consents",
}
MAY["researcher"] |= STUDY_READS | ENROLMENT_READS | EXPORTS  # their studies (s1), under pseudonyms
MAY["kiosk"] |= DESK  # consent at the desk: the studies at their site, their site's participants
# --- end of research ------------------------------------------------------------------------------------
SCOPES: dict[Role, list[str]] = {
    "admin": ["*"],
    "operator": ["site:gym-a"],
    "integrator": ["site:gym-a"],
    "kiosk": ["site:gym-a"],
    "researcher": ["study:s1"],
}
GYM_B = ("gym-b", "bike-b", str(OTHER))
"""What no scoped caller may ever read."""


@dataclass
class Call:
    method: str
    path: str
    params: dict[str, str] = field(default_factory=dict)
    body: dict[str, Any] | None = None
    unknown: tuple[str, str] | None = None
    """(gym-b's id in this call, an unknown id of the same kind): the same call for a missing resource."""
    fresh: bool = False
    """``@n`` in the path or body becomes a new number at every send (a call that creates something)."""
    stream: bool = False
    """An endless answer (Server-Sent Events): its first event stands for the body."""

    async def send(self, http: httpx.AsyncClient, headers: dict[str, str] | None) -> httpx.Response:
        path, body = self.path, self.body
        if self.fresh:
            path, body = json.loads(json.dumps([path, body]).replace("@n", str(next(FRESH))))
        if not self.stream:
            return await http.request(self.method, path, params=self.params, json=body, headers=headers)
        async with http.stream(self.method, path, params=self.params, headers=headers) as r:
            data = b""
            if r.is_success:
                async for chunk in r.aiter_bytes():
                    data += chunk
                    if b"\r\n\r\n" in data or b"\n\n" in data:
                        break
            else:
                data = await r.aread()
            return httpx.Response(r.status_code, headers=r.headers, content=data, request=r.request)

    def missing(self) -> Call:
        assert self.unknown is not None
        old, new = self.unknown
        swap = json.loads(json.dumps([self.path, self.params, self.body]).replace(old, new))
        return Call(self.method, swap[0], swap[1], swap[2], fresh=self.fresh, stream=self.stream)


FRESH = itertools.count()


@dataclass
class Route:
    inside: Call
    outside: Call | None
    """Naming gym-b's resource; None: the route names no resource of a site."""
    lists: Call | None = None
    """Unfiltered: rows of every site the caller may see."""


def iso(t: Any) -> str:
    return str(t.isoformat().replace("+00:00", "Z"))


def routes(session_a: int, session_b: int, key_id: str) -> dict[str, Route]:
    since = {"since": iso(T0 - timedelta(days=2))}
    dev = "/v1/devices/{}"
    return {
        "GET /v1/devices": Route(
            Call("GET", "/v1/devices", {"site": "gym-a"}),
            Call("GET", "/v1/devices", {"site": "gym-b"}, unknown=("gym-b", "gym-z")),
            Call("GET", "/v1/devices"),
        ),
        "GET /v1/devices/{device_id}": Route(
            Call("GET", dev.format("bike-1")), Call("GET", dev.format("bike-b"), unknown=("bike-b", "bike-z"))
        ),
        "GET /v1/devices/{device_id}/samples": Route(
            Call("GET", dev.format("bike-1") + "/samples"),
            Call("GET", dev.format("bike-b") + "/samples", unknown=("bike-b", "bike-z")),
        ),
        "GET /v1/devices/{device_id}/rr": Route(
            Call("GET", dev.format("strap-1") + "/rr", since),
            Call("GET", dev.format("bike-b") + "/rr", since, unknown=("bike-b", "bike-z")),
        ),
        "GET /v1/devices/{device_id}/quality": Route(
            Call("GET", dev.format("bike-1") + "/quality"),
            Call("GET", dev.format("bike-b") + "/quality", unknown=("bike-b", "bike-z")),
        ),
        "GET /v1/samples/latest": Route(
            Call("GET", "/v1/samples/latest", {"site": "gym-a"}),
            Call("GET", "/v1/samples/latest", {"site": "gym-b"}, unknown=("gym-b", "gym-z")),
            Call("GET", "/v1/samples/latest"),
        ),
        "GET /v1/dead-letters": Route(
            Call("GET", "/v1/dead-letters", {"device_id": "bike-1"}),
            Call("GET", "/v1/dead-letters", {"device_id": "bike-b"}, unknown=("bike-b", "bike-z")),
            Call("GET", "/v1/dead-letters"),
        ),
        "GET /v1/sessions": Route(
            Call("GET", "/v1/sessions", {"site": "gym-a"}),
            Call("GET", "/v1/sessions", {"device": "bike-b"}, unknown=("bike-b", "bike-z")),
            Call("GET", "/v1/sessions"),
        ),
        "GET /v1/sessions/{session_id}": Route(
            Call("GET", f"/v1/sessions/{session_a}"),
            Call("GET", f"/v1/sessions/{session_b}", unknown=(str(session_b), "999999999")),
        ),
        "POST /v1/participants": Route(
            Call("POST", "/v1/participants", body={"site_id": "gym-a", "external_ref": "m0001"}),
            Call(
                "POST",
                "/v1/participants",
                body={"site_id": "gym-b", "external_ref": "m0001"},
                unknown=("gym-b", "gym-z"),
            ),
        ),
        "GET /v1/participants/{participant_id}": Route(
            Call("GET", f"/v1/participants/{PARTICIPANT}"),
            Call("GET", f"/v1/participants/{OTHER}", unknown=(str(OTHER), UNKNOWN_PARTICIPANT)),
        ),
        "GET /v1/participants/{participant_id}/load": Route(
            Call("GET", f"/v1/participants/{PARTICIPANT}/load"),
            Call("GET", f"/v1/participants/{OTHER}/load", unknown=(str(OTHER), UNKNOWN_PARTICIPANT)),
        ),
        "POST /v1/check-ins": Route(
            Call(
                "POST",
                "/v1/check-ins",
                body={"device_id": "bike-1", "participant_id": str(PARTICIPANT), "started_at": iso(T0)},
            ),
            Call(
                "POST",
                "/v1/check-ins",
                body={"device_id": "bike-b", "participant_id": str(OTHER), "started_at": iso(T0)},
                unknown=("bike-b", "bike-z"),
            ),
        ),
        "POST /v1/check-ins/{device_id}/end": Route(
            Call("POST", "/v1/check-ins/bike-1/end", body={"ended_at": iso(T0 + timedelta(hours=1))}),
            Call(
                "POST",
                "/v1/check-ins/bike-b/end",
                body={"ended_at": iso(T0 + timedelta(hours=1))},
                unknown=("bike-b", "bike-z"),
            ),
        ),
        "GET /v1/check-ins": Route(
            Call("GET", "/v1/check-ins", {"device": "bike-1"}),
            Call(
                "GET", "/v1/check-ins", {"participant": str(OTHER)}, unknown=(str(OTHER), UNKNOWN_PARTICIPANT)
            ),
            Call("GET", "/v1/check-ins"),
        ),
        **{
            name: Route(
                Call("GET", name.split()[1].replace("{site_id}", "gym-a")),
                Call("GET", name.split()[1].replace("{site_id}", "gym-b"), unknown=("gym-b", "gym-z")),
            )
            for name in SITE_READS
        },
        "POST /v1/keys": Route(
            Call(
                "POST", "/v1/keys", body={"name": "m", "owner": "t", "role": "kiosk", "scope": ["site:gym-a"]}
            ),
            None,
        ),
        "GET /v1/keys": Route(Call("GET", "/v1/keys"), None),
        "GET /v1/keys/{key_id}": Route(Call("GET", f"/v1/keys/{key_id}"), None),
        "POST /v1/keys/{key_id}/revoke": Route(Call("POST", f"/v1/keys/{key_id}/revoke"), None),
        "GET /v1/audit": Route(Call("GET", "/v1/audit"), None),
        "GET /v1/contract/schema": Route(Call("GET", "/v1/contract/schema"), None),
        "GET /v1/contract/asyncapi": Route(Call("GET", "/v1/contract/asyncapi"), None),
        "POST /v1/contract/validate": Route(
            Call("POST", "/v1/contract/validate", body=_validate("gym-a", "bike-1")),
            Call(
                "POST", "/v1/contract/validate", body=_validate("gym-b", "bike-b"), unknown=("gym-b", "gym-z")
            ),
        ),
        "GET /v1/devices/{device_id}/dead-letters": Route(
            Call("GET", dev.format("bike-1") + "/dead-letters"),
            Call("GET", dev.format("bike-b") + "/dead-letters", unknown=("bike-b", "bike-z")),
        ),
        **registration_routes(),
        # --- issue 13: the live floor ---
        "GET /v1/sites/{site_id}/live": Route(
            Call("GET", "/v1/sites/gym-a/live", stream=True),
            Call("GET", "/v1/sites/gym-b/live", unknown=("gym-b", "gym-z"), stream=True),
        ),
        # --- end of issue 13 ---
        **fleet_routes(),
        **research_routes(),
        **site_export_routes(),
    }


# --- sites and registration (devices on the broker) ---


def registration_routes() -> dict[str, Route]:
    """Sites, and the devices and gateways of a site with their broker logins: each site has a registered
    device to rotate (``rot-``), one to retire (``ret-``), one to attach (``att-``), a gateway to rotate and
    attach to (``gw-``) and one to retire (``gwr-``), with the suffix ``a`` at gym-a and ``b`` at gym-b."""
    gym_z = ("gym-b", "gym-z")

    def at(method: str, tail: str, body: dict[str, Any] | None = None, fresh: bool = False) -> Route:
        """The call at gym-a (on its ``-a`` resources) and at gym-b (on its ``-b`` ones)."""
        inside = json.loads(json.dumps(body).replace("-X", "-a")) if body is not None else None
        outside = json.loads(json.dumps(body).replace("-X", "-b")) if body is not None else None
        return Route(
            Call(method, "/v1/sites/gym-a" + tail.replace("-X", "-a"), body=inside, fresh=fresh),
            Call(
                method, "/v1/sites/gym-b" + tail.replace("-X", "-b"), body=outside, unknown=gym_z, fresh=fresh
            ),
        )

    return {
        "POST /v1/sites": Route(
            Call("POST", "/v1/sites", body={"id": "new-site-@n", "timezone": "Europe/Oslo"}, fresh=True),
            None,
        ),
        "GET /v1/sites": Route(Call("GET", "/v1/sites"), None, Call("GET", "/v1/sites")),
        "GET /v1/sites/{site_id}": at("GET", ""),
        "PATCH /v1/sites/{site_id}": at("PATCH", "", {"name": "renamed"}),
        "GET /v1/sites/{site_id}/devices": at("GET", "/devices"),
        "POST /v1/sites/{site_id}/devices": at(
            "POST", "/devices", {"id": "new-dev-@n", "kind": "bike"}, fresh=True
        ),
        "POST /v1/sites/{site_id}/devices/{device_id}/rotate": at("POST", "/devices/rot-X/rotate"),
        "POST /v1/sites/{site_id}/devices/{device_id}/retire": at("POST", "/devices/ret-X/retire"),
        "GET /v1/sites/{site_id}/gateways": at("GET", "/gateways"),
        "POST /v1/sites/{site_id}/gateways": at("POST", "/gateways", {"id": "new-gw-@n"}, fresh=True),
        "POST /v1/sites/{site_id}/gateways/{gateway_id}/devices": at(
            "POST", "/gateways/gw-X/devices", {"devices": ["att-X"]}
        ),
        "POST /v1/sites/{site_id}/gateways/{gateway_id}/rotate": at("POST", "/gateways/gw-X/rotate"),
        "POST /v1/sites/{site_id}/gateways/{gateway_id}/retire": at("POST", "/gateways/gwr-X/retire"),
    }


def seed_registrations(url: str) -> None:
    """The registered devices and gateways of :func:`registration_routes` at gym-a and gym-b."""
    with psycopg.connect(url) as conn:
        for suffix, site in (("a", "gym-a"), ("b", "gym-b")):
            for gateway in (f"gw-{suffix}", f"gwr-{suffix}"):
                conn.execute(
                    "INSERT INTO gateways (gateway_id, site_id, registered_at) VALUES (%s, %s, %s)",
                    (gateway, site, NOW - timedelta(days=1)),
                )
            for device in (f"rot-{suffix}", f"ret-{suffix}", f"att-{suffix}"):
                conn.execute(
                    "INSERT INTO devices (device_id, site_id, kind, registered_at) "
                    "VALUES (%s, %s, 'bike', %s)",
                    (device, site, NOW - timedelta(days=1)),
                )


# --- end of sites and registration ---


def _validate(site: str, device: str) -> dict[str, Any]:
    sample = {"t": iso(T0), "hr_bpm": 90}
    payload = {"v": 1, "device": device, "seq": 0, "samples": [sample]}
    return {"topic": f"vitalab/v1/{site}/dev/{device}/telemetry", "payload": payload}


def seed_gym_b(url: str) -> int:
    """gym-b's device (with samples, RR intervals and a dead letter), participant, check-in and session."""
    with psycopg.connect(url) as conn:
        conn.execute(
            "INSERT INTO devices (device_id, site_id, kind, online, last_seen) "
            "VALUES ('bike-b', 'gym-b', 'bike', true, %s)",
            (T0,),
        )
        conn.execute(
            "INSERT INTO samples (device_id, t, site_id, seq, power_w, hr_bpm) "
            "VALUES ('bike-b', %s, 'gym-b', 1, 150, 130)",
            (T0,),
        )
        conn.execute(
            "INSERT INTO rr_intervals (device_id, t, idx, rr_ms) VALUES ('bike-b', %s, 0, 460)", (T0,)
        )
        conn.execute(
            "INSERT INTO participants (participant_id, site_id, external_ref) VALUES (%s, 'gym-b', 'b0001')",
            (OTHER,),
        )
        conn.execute(
            "INSERT INTO device_assignments (device_id, participant_id, started_at, ended_at) "
            "VALUES ('bike-b', %s, %s, %s)",
            (OTHER, T0 - timedelta(days=1), T0 - timedelta(days=1) + timedelta(minutes=30)),
        )
        row = conn.execute(
            "INSERT INTO sessions (site_id, participant_id, device_ids, started_at, ended_at, source, "
            "algorithm_version, summary, duration_s) VALUES ('gym-b', %s, ARRAY['bike-b'], %s, %s, "
            "'check_in', %s, '{}', 60) RETURNING session_id",
            (OTHER, T0 - timedelta(days=1), T0 - timedelta(days=1) + timedelta(minutes=1), ALGORITHM_VERSION),
        ).fetchone()
        conn.execute(
            "INSERT INTO dead_letters (topic, reason, detail, device_id, payload, payload_size) VALUES "
            "('vitalab/v1/gym-b/dev/bike-b/telemetry', 'schema', 'bad', 'bike-b', '\\x7b7d'::bytea, 2)"
        )
    assert row is not None
    return int(row[0])


# --- research: studies, enrolment and consent, exports (issue 12) ------------------------------------------
# s1 (gym-a): the researcher key's study; s2 (gym-a and gym-b): outside it, and the kiosk (gym-a) sees it but
# not gym-b's participants. Out of scope: s2 for researchers (answers as the unknown study s9), gym-b's
# participants for the kiosk (as an unknown participant).
MEMBER = UUID("0b9e6d2a-4c1f-4a8e-9d3b-5e7f1a2c4d60")
"""A second participant of gym-a (enrolled in s1: consent changes)."""
OTHER_2 = UUID("c4e2a7b9-1d3f-4b5a-8e6c-9f0a2b4d6e81")
"""A second participant of gym-b (enrolled in s2: consent changes)."""
TO_ERASE = {
    "gym-a": UUID("e1a5e000-0000-4000-8000-00000000000a"),
    "gym-b": UUID("e1a5e000-0000-4000-8000-00000000000b"),
}
"""A participant at each site for the admin to erase."""
STUDY_KEYS = {"s1": bytes(range(32)), "s2": bytes(range(32, 64))}
EXPORT_IDS = {
    "s1": UUID("6d1f4c1e-0000-4000-8000-0000000000a1"),
    "s2": UUID("6d1f4c1e-0000-4000-8000-0000000000b2"),
}
CONSENTED_AT = NOW - timedelta(days=1)
OUT_STUDY = ("s2", "s9")
"""(the study outside the researcher's scope, an unknown study id)."""


def _enrolment(participant: UUID) -> dict[str, Any]:
    """The enrolment the seed stored: sent again, it answers 200 with what is stored."""
    return {
        "participant_id": str(participant),
        "consent_version": "v1",
        "scopes": ["derived_metrics"],
        "given_at": iso(CONSENTED_AT),
    }


def seed_research(url: str, export_dir: Path) -> None:
    """Studies s1 (gym-a) and s2 (gym-a, gym-b), recruiting, each with two enrolments and a succeeded export
    (its manifest in ``export_dir``); drafts to delete at each site."""
    with psycopg.connect(url) as conn:
        people = [(MEMBER, "gym-a", "m0002"), (OTHER_2, "gym-b", "b0002")]
        people += [(pid, site, f"erase-{site}") for site, pid in TO_ERASE.items()]
        for participant, site, ref in people:
            conn.execute(
                "INSERT INTO participants (participant_id, site_id, external_ref) VALUES (%s, %s, %s)",
                (participant, site, ref),
            )
        studies = {
            "s1": (["gym-a"], "recruiting", (PARTICIPANT, MEMBER)),
            "s2": (["gym-a", "gym-b"], "recruiting", (OTHER, OTHER_2)),
            "sa-draft": (["gym-a"], "draft", ()),
            "sb-draft": (["gym-b"], "draft", ()),
        }
        for study, (sites, status, enrolled) in studies.items():
            conn.execute(
                "INSERT INTO studies (study_id, title, starts_on, scopes, status) "
                "VALUES (%s, 'T', '2026-01-01', '{derived_metrics}', %s)",
                (study, status),
            )
            for site in sites:
                conn.execute("INSERT INTO study_sites VALUES (%s, %s)", (study, site))
            conn.execute(
                "INSERT INTO study_keys VALUES (%s, %s, %s)", (study, STUDY_KEYS.get(study, bytes(32)), NOW)
            )
            for participant in enrolled:
                conn.execute(
                    "INSERT INTO study_enrolments (study_id, participant_id, enrolled_at) "
                    "VALUES (%s, %s, %s)",
                    (study, participant, CONSENTED_AT),
                )
                conn.execute(
                    "INSERT INTO study_consents (study_id, participant_id, consent_version, scopes, "
                    "given_at, recorded_at, recorded_by) "
                    "VALUES (%s, %s, 'v1', '{derived_metrics}', %s, %s, 'desk')",
                    (study, participant, CONSENTED_AT, CONSENTED_AT),
                )
        for study, export_id in EXPORT_IDS.items():
            directory = export_dir / str(export_id) / "attempt-1"
            directory.mkdir(parents=True)
            manifest = {"export_id": str(export_id), "study_id": study, "files": []}
            (directory / "manifest.json").write_text(json.dumps(manifest))
            conn.execute(
                "INSERT INTO export_jobs (export_id, study_id, requested_by, requested_at, params, status, "
                "directory, manifest) VALUES (%s, %s, 'tester', %s, %s, 'succeeded', %s, %s)",
                (
                    export_id,
                    study,
                    NOW,
                    Jsonb({"datasets": ["sessions"], "format": "csv"}),
                    f"{export_id}/attempt-1",
                    Jsonb(manifest),
                ),
            )


def research_routes() -> dict[str, Route]:
    def study(path: str = "", method: str = "GET", body: dict[str, Any] | None = None) -> Route:
        """The call on s1, and on s2 (out of the researcher's scope: as the unknown s9)."""
        return Route(
            Call(method, f"/v1/studies/s1{path.format(**_ids('s1'))}", body=body),
            Call(method, f"/v1/studies/s2{path.format(**_ids('s2'))}", body=body, unknown=OUT_STUDY),
        )

    export = {"datasets": ["sessions"], "format": "csv"}
    consent = {"action": "give", "consent_version": "v2", "scopes": ["derived_metrics"]}
    return {
        "POST /v1/studies": Route(
            Call(
                "POST",
                "/v1/studies",
                body={
                    "study_id": "s-new",
                    "title": "N",
                    "starts_on": "2026-12-01",
                    "sites": ["gym-a"],
                    "scopes": ["derived_metrics"],
                },
            ),
            None,
        ),
        "GET /v1/studies": Route(Call("GET", "/v1/studies"), None, Call("GET", "/v1/studies")),
        "GET /v1/studies/{study_id}": study(),
        "PATCH /v1/studies/{study_id}": study(method="PATCH", body={"title": "Renamed"}),
        "DELETE /v1/studies/{study_id}": Route(
            Call("DELETE", "/v1/studies/sa-draft"),
            Call("DELETE", "/v1/studies/sb-draft", unknown=("sb-draft", "sz-draft")),
        ),
        # the desk: s2 takes part at gym-a, so the kiosk sees it, but not gym-b's participants
        "POST /v1/studies/{study_id}/enrolments": Route(
            Call("POST", "/v1/studies/s1/enrolments", body=_enrolment(PARTICIPANT)),
            Call(
                "POST",
                "/v1/studies/s2/enrolments",
                body=_enrolment(OTHER),
                unknown=(str(OTHER), UNKNOWN_PARTICIPANT),
            ),
        ),
        "POST /v1/studies/{study_id}/participants/{participant_id}/consents": Route(
            Call("POST", f"/v1/studies/s1/participants/{MEMBER}/consents", body=consent),
            Call(
                "POST",
                f"/v1/studies/s2/participants/{OTHER_2}/consents",
                body=consent,
                unknown=(str(OTHER_2), UNKNOWN_PARTICIPANT),
            ),
        ),
        "GET /v1/studies/{study_id}/enrolments": study("/enrolments"),
        "GET /v1/studies/{study_id}/enrolments/{pseudonym}/consents": study(
            "/enrolments/{pseudonym}/consents"
        ),
        "POST /v1/studies/{study_id}/exports": study("/exports", method="POST", body=export),
        "GET /v1/studies/{study_id}/exports": study("/exports"),
        "GET /v1/studies/{study_id}/exports/{export_id}": study("/exports/{export_id}"),
        "GET /v1/studies/{study_id}/exports/{export_id}/files/{name}": study(
            "/exports/{export_id}/files/manifest.json"
        ),
        "POST /v1/participants/{participant_id}/erase": Route(
            Call("POST", f"/v1/participants/{TO_ERASE['gym-a']}/erase"),
            Call(
                "POST",
                f"/v1/participants/{TO_ERASE['gym-b']}/erase",
                unknown=(str(TO_ERASE["gym-b"]), UNKNOWN_PARTICIPANT),
            ),
        ),
    }


def _ids(study: str) -> dict[str, str]:
    """The path parameters naming the study's stored resources."""
    participant = PARTICIPANT if study == "s1" else OTHER
    return {"pseudonym": pseudonym(STUDY_KEYS[study], participant), "export_id": str(EXPORT_IDS[study])}


# --- end of research ------------------------------------------------------------------------------------


async def revoked_key(url: str) -> str:
    token = await make_key(url, "admin", name="revoked")
    async with await psycopg.AsyncConnection.connect(url) as conn:
        parts = keys.split(token)
        assert parts is not None
        assert await keys.revoke_key(conn, parts[0], NOW - timedelta(minutes=1)) is not None
    return token


def may(role: Role, name: str) -> bool:
    return role == "admin" or name in MAY[role]


def leaks(role: Role, response: httpx.Response) -> list[str]:
    """What a 2xx answer shows that the role may not see (an error echoes only the request's own path)."""
    if role == "admin" or not response.is_success:
        return []
    forbidden = list(GYM_B) + ([] if role == "kiosk" else [str(PARTICIPANT)])
    return [word for word in forbidden if word in response.text]


def same_but_id(out: httpx.Response, missing: httpx.Response, ids: tuple[str, str]) -> None:
    """An out-of-scope answer is the answer for an unknown resource, but for the id it names."""
    assert out.status_code == missing.status_code == 404, (out.text, missing.text)
    assert out.headers["content-type"] == missing.headers["content-type"]
    body = json.loads(missing.text.replace(ids[1], ids[0]))
    assert out.json() == body, (out.json(), body)


async def test_every_route_every_role_every_credential(database_url: str, tmp_path: Path) -> None:
    seeded = seed(database_url)
    session_b = seed_gym_b(database_url)
    seed_registrations(database_url)
    seed_research(database_url, tmp_path)
    seed_site_exports(database_url, tmp_path)
    throwaway = await make_key(database_url, "operator", name="to revoke")
    table = routes(seeded.session_id, session_b, throwaway[3:19])
    role_keys = {
        role: await make_key(database_url, role, Scope.parse(SCOPES[role]), name=role) for role in SCOPES
    }
    wrong = role_keys["admin"][:-4] + ("AAAA" if not role_keys["admin"].endswith("AAAA") else "BBBB")
    refused: dict[str, dict[str, str] | None] = {
        "no credential": None,
        "wrong secret": bearer(wrong),
        "revoked": bearer(await revoked_key(database_url)),
        "expired": bearer(
            await make_key(
                database_url, "admin", now=NOW - timedelta(hours=2), expires_at=NOW - timedelta(hours=1)
            )
        ),
        "not a key": bearer("hunter2"),
        "unknown key": bearer("vl_0123456789abcdef_" + "A" * 43),
    }
    # device registration issues broker logins in an account store (of a broker that is not running)
    store = MosquittoAuth(tmp_path / "broker", NoReload())
    app = app_at(
        database_url,
        NOW,
        auth_failures_max=1_000_000,
        broker_auth=store,
        export_worker=False,
        export_dir=tmp_path,
    )
    app_routes = {f"{m} {t}" for m, t, _ in policy.endpoints(app.routes)}
    public = {n for n in app_routes if policy.rule_for(*n.split(" ", 1)) == policy.PUBLIC}
    assert (
        public
        == {
            "GET /health",
            "GET /openapi.json",
            "GET /docs",
            "GET /docs/oauth2-redirect",
            "GET /redoc",
            "GET /static/docs/{path}",
        }
        | DASHBOARD
    )
    assert app_routes - public == set(table), "a route this matrix does not know how to call (or a stale one)"
    for role, names in MAY.items():
        assert names <= set(table), role
    cells = 0
    async with serve(app, key=None) as http:
        for name, route in table.items():
            # no credential, or one that is not (or no longer) valid: 401 with the challenge, nothing else
            for kind, headers in refused.items():
                r = await route.inside.send(http, headers)
                assert r.status_code == 401, (name, kind, r.status_code, r.text)
                assert r.headers["www-authenticate"].startswith("Bearer"), (name, kind)
                assert r.json()["status"] == 401
                cells += 1
            for role in ("admin", "operator", "integrator", "kiosk", "researcher"):
                headers = bearer(role_keys[role])
                r = await route.inside.send(http, headers)
                expected = "2xx" if may(role, name) else "403"
                got = "2xx" if r.is_success else str(r.status_code)
                assert got == expected, (name, role, "in scope", r.status_code, r.text)
                assert not leaks(role, r), (name, role, leaks(role, r))
                cells += 1
                if route.outside is not None:
                    r = await route.outside.send(http, headers)
                    if not may(role, name):
                        assert r.status_code == 403, (name, role, "out of scope", r.text)
                    elif role == "admin":
                        assert r.is_success, (name, role, "out of scope", r.text)
                    else:
                        assert route.outside.unknown is not None
                        same_but_id(
                            r, await route.outside.missing().send(http, headers), route.outside.unknown
                        )
                    cells += 1
                if route.lists is not None and may(role, name):
                    r = await route.lists.send(http, headers)
                    assert r.is_success, (name, role, r.text)
                    if role == "admin":  # the data is there: a scoped caller's empty hands mean something
                        assert any(word in r.text for word in GYM_B), (name, r.text)
                    assert not leaks(role, r), (name, role, leaks(role, r))
    assert cells >= len(table) * (len(refused) + 5)


SITE_EXPORT_IDS = {
    "gym-a": UUID("5e0e4a11-0000-4000-8000-0000000000a1"),
    "gym-b": UUID("5e0e4a11-0000-4000-8000-0000000000b2"),
}


def seed_site_exports(url: str, export_dir: Path) -> None:
    """A succeeded site export of each site (its manifest in ``export_dir``)."""
    with psycopg.connect(url) as conn:
        for site, export_id in SITE_EXPORT_IDS.items():
            directory = export_dir / str(export_id) / "attempt-1"
            directory.mkdir(parents=True)
            manifest = {"export_id": str(export_id), "site_id": site, "files": []}
            (directory / "manifest.json").write_text(json.dumps(manifest))
            conn.execute(
                "INSERT INTO export_jobs (export_id, kind, site_id, requested_by, requested_at, params, "
                "status, directory, manifest) VALUES (%s, 'site', %s, 'tester', %s, %s, 'succeeded', %s, %s)",
                (
                    export_id,
                    site,
                    NOW,
                    Jsonb({"datasets": ["utilisation"], "format": "csv"}),
                    f"{export_id}/attempt-1",
                    Jsonb(manifest),
                ),
            )


def site_export_routes() -> dict[str, Route]:
    """Site exports (api/routes/site_exports.py): gym-a's, and gym-b's (as the unknown gym-z)."""
    ask = {"datasets": ["utilisation"], "format": "csv", "since": "2026-11-24", "until": "2026-11-25"}

    def at(method: str, tail: str, body: dict[str, Any] | None = None) -> Route:
        return Route(
            Call(method, "/v1/sites/gym-a/exports" + tail.format(SITE_EXPORT_IDS["gym-a"]), body=body),
            Call(
                method,
                "/v1/sites/gym-b/exports" + tail.format(SITE_EXPORT_IDS["gym-b"]),
                body=body,
                unknown=("gym-b", "gym-z"),
            ),
        )

    return {
        "POST /v1/sites/{site_id}/exports": at("POST", "", ask),
        "GET /v1/sites/{site_id}/exports": at("GET", ""),
        "GET /v1/sites/{site_id}/exports/{export_id}": at("GET", "/{}"),
        "GET /v1/sites/{site_id}/exports/{export_id}/files/{name}": at("GET", "/{}/files/manifest.json"),
    }


def fleet_routes() -> dict[str, Route]:
    """Fleet health and maintenance (api/routes/fleet.py)."""
    site = "/v1/sites/{}/"
    hours = {"periods": [{"weekday": 1, "opens": "06:00", "closes": "22:00"}]}
    hook = {"url": "http://127.0.0.1:9/alerts"}
    out = {
        f"{method} /v1/sites/{{site_id}}/{name}": Route(
            Call(method, site.format("gym-a") + name, body=body),
            Call(method, site.format("gym-b") + name, body=body, unknown=("gym-b", "gym-z")),
        )
        for method, name, body in (
            ("GET", "fleet", None),
            ("GET", "alerts", None),
            ("GET", "opening-hours", None),
            ("PUT", "opening-hours", hours),
            ("GET", "webhook", None),
            ("PUT", "webhook", hook),
        )
    }
    out["POST /v1/devices/{device_id}/serviced"] = Route(
        Call("POST", "/v1/devices/bike-1/serviced", body={"note": "belt"}),
        Call("POST", "/v1/devices/bike-b/serviced", body={"note": "belt"}, unknown=("bike-b", "bike-z")),
    )
    out["GET /v1/service-thresholds"] = Route(Call("GET", "/v1/service-thresholds"), None)
    out["PUT /v1/service-thresholds"] = Route(
        Call("PUT", "/v1/service-thresholds", body={"kind": "treadmill", "km": 5000, "hours": 1000}), None
    )
    return out
