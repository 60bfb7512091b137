"""Who may call what: one table from (method, path template) to the roles allowed and how the caller's scope
is checked. Default deny: a route without an entry answers 403 to everyone (and fails
``tests/api/test_access.py``). The guard (:mod:`api.guard`) enforces the roles for every request;
``tests/api/test_access_matrix.py`` holds every route, role and credential to a hand-written expectation.

Roles
    ``admin``: everything, key management, the audit log. ``operator``: their sites' devices, device health,
    utilisation, occupancy, sessions without participant identity, suppressed vitality aggregates, the live
    floor (newest samples). ``researcher``: their studies: the study, its enrolments and consent histories
    under pseudonyms, its exports (no raw device management, never internal participant ids, site references
    or check-ins).
    ``integrator``: their sites' devices and those devices' dead letters. ``kiosk``: one site: registering
    participants, enrolling them in the studies at that site with the consent given at the desk, check-ins.

Scope checks (:class:`Ref`)
    Every resource a request names (``refs``: in its path, query or JSON body) is checked against the
    caller's scope: a site directly, a device, participant or session through the site it belongs to, a study
    directly (for a kiosk, which has no studies: through the sites the study takes part at). The check is
    made by the lookup that answers 404 for an unknown resource (:mod:`api.routes.lookup`, the routes'
    fetches, :mod:`api.services.check_ins`, :mod:`api.services.studies`), after the route's own
    validation, so something out of scope answers 404 exactly as something unknown does, in every case: a
    caller learns nothing about what it may not see. Participants are in scope only for roles that see
    participant ids (admin, kiosk).
    Routes marked ``lists`` return rows of many sites: their handlers filter the rows to the caller's scope
    (``caller.sites`` / ``caller.studies``) and hide participant ids from operators
    (:func:`sees_participants`).

Audit
    Every write (any method but GET/HEAD), every route marked ``personal`` (participant-level data: profiles,
    check-ins, sessions, physiological series, enrolments, export downloads) and every refused authentication
    or authorisation is recorded (:mod:`api.audit`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Literal

import fastapi.routing
from starlette.routing import BaseRoute

from api.security import Caller, Role

RefKind = Literal["site", "device", "participant", "session", "study", "letters_device"]
"""``letters_device``: a device named by dead letters, registered or not (then its site is its letters'
topics' site)."""
Where = Literal["path", "query", "body"]


@dataclass(frozen=True, slots=True)
class Ref:
    """A resource named by a request: ``kind`` of resource, ``where`` it is named, under which ``name``."""

    kind: RefKind
    where: Where
    name: str

    @property
    def field(self) -> str:
        return f"{self.where}.{self.name}"


@dataclass(frozen=True, slots=True)
class Rule:
    roles: frozenset[Role]
    refs: tuple[Ref, ...] = ()
    lists: bool = False
    """The handler returns rows of many sites and filters them to the caller's scope."""
    personal: bool = False
    """Participant-level data: every call is audited."""
    public: bool = False
    """No credential needed (health and the API's own documentation)."""


def allow(*roles: Role, refs: tuple[Ref, ...] = (), lists: bool = False, personal: bool = False) -> Rule:
    return Rule(frozenset(roles), refs, lists, personal)


PUBLIC: Final = Rule(frozenset(), public=True)
SEES_PARTICIPANTS: Final[frozenset[Role]] = frozenset({"admin", "kiosk"})


def sees_participants(caller: Caller) -> bool:
    """Whether the caller's role may see internal participant ids (operators see sessions without them)."""
    return caller.role in SEES_PARTICIPANTS


def path(kind: RefKind, name: str) -> Ref:
    return Ref(kind, "path", name)


def query(kind: RefKind, name: str) -> Ref:
    return Ref(kind, "query", name)


def body(kind: RefKind, name: str) -> Ref:
    return Ref(kind, "body", name)


POLICY: Final[dict[tuple[str, str], Rule]] = {
    # open: is the API up, and what does it offer
    ("GET", "/health"): PUBLIC,
    ("GET", "/openapi.json"): PUBLIC,
    ("GET", "/docs"): PUBLIC,
    ("GET", "/docs/oauth2-redirect"): PUBLIC,
    ("GET", "/redoc"): PUBLIC,
    ("GET", "/static/docs/{path}"): PUBLIC,
    # devices and their data
    ("GET", "/v1/devices"): allow(
        "admin", "operator", "integrator", refs=(query("site", "site"),), lists=True
    ),
    ("GET", "/v1/devices/{device_id}"): allow(
        "admin", "operator", "integrator", refs=(path("device", "device_id"),)
    ),
    ("GET", "/v1/devices/{device_id}/quality"): allow(
        "admin", "operator", "integrator", refs=(path("device", "device_id"),)
    ),
    ("GET", "/v1/devices/{device_id}/samples"): allow(
        "admin", refs=(path("device", "device_id"),), personal=True
    ),
    ("GET", "/v1/devices/{device_id}/rr"): allow("admin", refs=(path("device", "device_id"),), personal=True),
    ("GET", "/v1/samples/latest"): allow(
        "admin", "operator", refs=(query("site", "site"),), lists=True, personal=True
    ),
    ("GET", "/v1/dead-letters"): allow(
        "admin", "integrator", refs=(query("letters_device", "device_id"),), lists=True
    ),
    # the integrator kit: the contract, a message judged as the ingester would, a device's dead letters
    ("GET", "/v1/contract/schema"): allow("admin", "operator", "researcher", "integrator", "kiosk"),
    ("GET", "/v1/contract/asyncapi"): allow("admin", "operator", "researcher", "integrator", "kiosk"),
    ("POST", "/v1/contract/validate"): allow("admin", "integrator"),
    # (the site in the body's topic is checked by the handler: out of scope answers 404 on body.topic)
    ("GET", "/v1/devices/{device_id}/dead-letters"): allow(
        "admin", "integrator", refs=(path("letters_device", "device_id"),)
    ),
    # sessions (operators: without participant identity)
    ("GET", "/v1/sessions"): allow(
        "admin",
        "operator",
        refs=(query("site", "site"), query("device", "device"), query("participant", "participant")),
        lists=True,
        personal=True,
    ),
    ("GET", "/v1/sessions/{session_id}"): allow(
        "admin", "operator", refs=(path("session", "session_id"),), personal=True
    ),
    # participants and check-ins (the kiosk at the desk)
    ("POST", "/v1/participants"): allow("admin", "kiosk", refs=(body("site", "site_id"),)),
    ("GET", "/v1/participants/{participant_id}"): allow(
        "admin", "kiosk", refs=(path("participant", "participant_id"),), personal=True
    ),
    ("GET", "/v1/participants/{participant_id}/load"): allow(
        "admin", refs=(path("participant", "participant_id"),), personal=True
    ),
    ("POST", "/v1/check-ins"): allow(
        "admin", "kiosk", refs=(body("device", "device_id"), body("participant", "participant_id"))
    ),
    # (the body's participant_id is only compared with the open check-in's, of the device's site)
    ("POST", "/v1/check-ins/{device_id}/end"): allow("admin", "kiosk", refs=(path("device", "device_id"),)),
    ("GET", "/v1/check-ins"): allow(
        "admin",
        "kiosk",
        refs=(query("device", "device"), query("participant", "participant")),
        lists=True,
        personal=True,
    ),
    # per-site reports for operators
    ("GET", "/v1/sites/{site_id}/utilisation"): allow("admin", "operator", refs=(path("site", "site_id"),)),
    ("GET", "/v1/sites/{site_id}/occupancy"): allow("admin", "operator", refs=(path("site", "site_id"),)),
    ("GET", "/v1/sites/{site_id}/vitality"): allow("admin", "operator", refs=(path("site", "site_id"),)),
    # site exports: those reports as files (api/routes/site_exports.py); requests are writes (audited), every
    # download is audited like a study export's
    ("POST", "/v1/sites/{site_id}/exports"): allow("admin", "operator", refs=(path("site", "site_id"),)),
    ("GET", "/v1/sites/{site_id}/exports"): allow("admin", "operator", refs=(path("site", "site_id"),)),
    ("GET", "/v1/sites/{site_id}/exports/{export_id}"): allow(
        "admin", "operator", refs=(path("site", "site_id"),)
    ),
    ("GET", "/v1/sites/{site_id}/exports/{export_id}/files/{name}"): allow(
        "admin", "operator", refs=(path("site", "site_id"),), personal=True
    ),
    # --- issue 13: the live floor and the operators' dashboard ---
    # the live floor: heart-rate zones of whoever is on a device (no identity), so audited like latest samples
    ("GET", "/v1/sites/{site_id}/live"): allow(
        "admin", "operator", refs=(path("site", "site_id"),), personal=True
    ),
    # the page and its files hold no data: a browser cannot send a bearer header when it navigates; the page
    # sends the key it is given with every request it makes (api/routes/dashboard.py)
    ("GET", "/"): PUBLIC,
    ("GET", "/static/dashboard/{path}"): PUBLIC,
    # --- end of issue 13 ---
    # fleet health and maintenance (api/routes/fleet.py): operators read their sites' fleet and alerts and
    # record services; the settings behind the alerts are the admin's (a webhook URL can reach any host)
    ("GET", "/v1/sites/{site_id}/fleet"): allow("admin", "operator", refs=(path("site", "site_id"),)),
    ("GET", "/v1/sites/{site_id}/alerts"): allow("admin", "operator", refs=(path("site", "site_id"),)),
    ("POST", "/v1/devices/{device_id}/serviced"): allow(
        "admin", "operator", refs=(path("device", "device_id"),)
    ),
    ("GET", "/v1/service-thresholds"): allow("admin", "operator"),
    ("PUT", "/v1/service-thresholds"): allow("admin"),
    ("GET", "/v1/sites/{site_id}/opening-hours"): allow("admin", "operator", refs=(path("site", "site_id"),)),
    ("PUT", "/v1/sites/{site_id}/opening-hours"): allow("admin", refs=(path("site", "site_id"),)),
    ("GET", "/v1/sites/{site_id}/webhook"): allow("admin", refs=(path("site", "site_id"),)),
    ("PUT", "/v1/sites/{site_id}/webhook"): allow("admin", refs=(path("site", "site_id"),)),
    # access management
    ("POST", "/v1/keys"): allow("admin"),
    ("GET", "/v1/keys"): allow("admin"),
    ("GET", "/v1/keys/{key_id}"): allow("admin"),
    ("POST", "/v1/keys/{key_id}/revoke"): allow("admin"),
    ("GET", "/v1/audit"): allow("admin"),
    # --- sites, and devices and gateways on the broker (api/routes/sites_admin.py, registration.py) ---
    # admins set sites up; whoever works at a site reads it (timezone, opening hours)
    ("POST", "/v1/sites"): allow("admin"),
    ("GET", "/v1/sites"): allow("admin", "operator", "integrator", "kiosk", lists=True),
    ("GET", "/v1/sites/{site_id}"): allow(
        "admin", "operator", "integrator", "kiosk", refs=(path("site", "site_id"),)
    ),
    ("PATCH", "/v1/sites/{site_id}"): allow("admin", refs=(path("site", "site_id"),)),
    # integrators register their sites' devices and gateways and get their broker logins (the device or
    # gateway in the path must be of the path's site, else 404; gateways and devices named in a body too)
    ("GET", "/v1/sites/{site_id}/devices"): allow(
        "admin", "operator", "integrator", refs=(path("site", "site_id"),)
    ),
    ("POST", "/v1/sites/{site_id}/devices"): allow("admin", "integrator", refs=(path("site", "site_id"),)),
    ("POST", "/v1/sites/{site_id}/devices/{device_id}/rotate"): allow(
        "admin", "integrator", refs=(path("site", "site_id"), path("device", "device_id"))
    ),
    ("POST", "/v1/sites/{site_id}/devices/{device_id}/retire"): allow(
        "admin", "integrator", refs=(path("site", "site_id"), path("device", "device_id"))
    ),
    ("GET", "/v1/sites/{site_id}/gateways"): allow(
        "admin", "operator", "integrator", refs=(path("site", "site_id"),)
    ),
    ("POST", "/v1/sites/{site_id}/gateways"): allow("admin", "integrator", refs=(path("site", "site_id"),)),
    ("POST", "/v1/sites/{site_id}/gateways/{gateway_id}/devices"): allow(
        "admin", "integrator", refs=(path("site", "site_id"),)
    ),
    ("POST", "/v1/sites/{site_id}/gateways/{gateway_id}/rotate"): allow(
        "admin", "integrator", refs=(path("site", "site_id"),)
    ),
    ("POST", "/v1/sites/{site_id}/gateways/{gateway_id}/retire"): allow(
        "admin", "integrator", refs=(path("site", "site_id"),)
    ),
    # --- end of sites and registration ---
    # --- research: studies, enrolment and consent, exports (issue 12) -----------------------------------
    # studies: admins manage them; researchers see their own (the list is filtered to caller.studies)
    ("POST", "/v1/studies"): allow("admin"),
    ("GET", "/v1/studies"): allow("admin", "researcher", lists=True),
    ("GET", "/v1/studies/{study_id}"): allow("admin", "researcher", refs=(path("study", "study_id"),)),
    ("PATCH", "/v1/studies/{study_id}"): allow("admin", refs=(path("study", "study_id"),)),
    ("DELETE", "/v1/studies/{study_id}"): allow("admin", refs=(path("study", "study_id"),)),
    # enrolment and consent at the desk: the participant's site (a desk sees the studies at its site)
    ("POST", "/v1/studies/{study_id}/enrolments"): allow(
        "admin", "kiosk", refs=(path("study", "study_id"), body("participant", "participant_id"))
    ),
    ("POST", "/v1/studies/{study_id}/participants/{participant_id}/consents"): allow(
        "admin", "kiosk", refs=(path("study", "study_id"), path("participant", "participant_id"))
    ),
    # enrolments and consent histories under pseudonyms: the study's researchers
    ("GET", "/v1/studies/{study_id}/enrolments"): allow(
        "admin", "researcher", refs=(path("study", "study_id"),), personal=True
    ),
    ("GET", "/v1/studies/{study_id}/enrolments/{pseudonym}/consents"): allow(
        "admin", "researcher", refs=(path("study", "study_id"),), personal=True
    ),
    # exports: requests are writes (audited); every download is audited (personal)
    ("POST", "/v1/studies/{study_id}/exports"): allow(
        "admin", "researcher", refs=(path("study", "study_id"),)
    ),
    ("GET", "/v1/studies/{study_id}/exports"): allow(
        "admin", "researcher", refs=(path("study", "study_id"),)
    ),
    ("GET", "/v1/studies/{study_id}/exports/{export_id}"): allow(
        "admin", "researcher", refs=(path("study", "study_id"),)
    ),
    ("GET", "/v1/studies/{study_id}/exports/{export_id}/files/{name}"): allow(
        "admin", "researcher", refs=(path("study", "study_id"),), personal=True
    ),
    # erasure of a participant: everything attributable to them (admins)
    ("POST", "/v1/participants/{participant_id}/erase"): allow(
        "admin", refs=(path("participant", "participant_id"),)
    ),
    # --- end of research ----------------------------------------------------------------------------------
}


def rule_for(method: str, template: str) -> Rule | None:
    """The entry of a route (HEAD as GET); None: no entry, so nobody may call it."""
    found = POLICY.get((method, template))
    if found is None and method == "HEAD":
        found = POLICY.get(("GET", template))
    return found


def endpoints(routes: Sequence[BaseRoute]) -> list[tuple[str, str, BaseRoute]]:
    """``(method, template, route)`` of every route of an app, those of included routers too (a mount:
    GET)."""
    # FastAPI >= 0.160 keeps included routers as branches: walk their effective routes
    walk = getattr(fastapi.routing, "iter_route_contexts", None)
    found: list[tuple[str, str, BaseRoute]] = []
    for context in walk(routes) if walk is not None else routes:
        route = getattr(context, "original_route", context)
        template = getattr(context, "path_format", None) or getattr(context, "path", None)
        if template is None:
            continue
        methods = getattr(context, "methods", None) or {"GET"}
        found.extend((m, template, route) for m in sorted(methods) if m != "HEAD")
    return found


def missing(routes: Sequence[BaseRoute]) -> list[str]:
    """``METHOD /template`` of every route (and mount) of an app without a policy entry."""
    return [f"{m} {t}" for m, t, _ in endpoints(routes) if rule_for(m, t) is None]
