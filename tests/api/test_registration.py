"""Sites set up by admins, and devices and gateways registered by integrators with their broker logins
(api/routes/sites_admin.py, api/routes/registration.py, api/services/registration.py).

Against PostgreSQL and a real account store (``MosquittoAuth`` in a temporary directory); the end-to-end test
runs a real broker enforcing that store (Mosquitto reloaded by SIGHUP, and the in-process amqtt broker of
`vitalab up`), the real ingester and the API: a device registered through the API publishes and its data
lands in the database, a device cannot publish as another, a retired device is refused and its open
connection dropped."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import paho.mqtt.client as mqtt
import psycopg
import pytest
from fastapi import FastAPI

from api.main import create_app
from api.security import Scope
from tests.api.seed import NOW
from tests.api.support import PinnedClock, assert_problem, bearer, serve
from tests.broker.clients import Connector, Session, assert_not_authorized
from tests.broker.conftest import AmqttThread, _start_mosquitto, _stop
from tests.conftest import free_port
from tests.support.helpers import count, make_key, make_settings, running_ingester, scalar, wait_until
from vitalab.broker import DeviceAccount, GatewayAccount, MosquittoAuth, NoReload, Role, SignalReload
from vitalab.broker.amqtt_auth import LiveAccounts
from vitalab.broker.credentials import verify_password
from vitalab.settings import MqttTarget
from vitalab.wire import Sample, TelemetryMessage, TopicKind, device_topic, encode

pytestmark = pytest.mark.asyncio

OSLO_HOURS = {"mon": [["06:00", "22:00"]], "sat": [["08:00", "12:00"], ["14:00", "20:00"]]}


def app_with(database_url: str, auth: MosquittoAuth | None) -> FastAPI:
    app = create_app(make_settings(), database_url, clock=PinnedClock(NOW), broker_auth=auth)
    app.state.test_database_url = database_url
    return app


def sites(url: str, *ids: str) -> None:
    with psycopg.connect(url) as conn:
        for site in ids:
            conn.execute("INSERT INTO sites (site_id) VALUES (%s)", (site,))


@pytest.fixture
def store(tmp_path: Path) -> MosquittoAuth:
    """An account store of a broker that is not running (it would read the files at its start)."""
    return MosquittoAuth(tmp_path / "broker", NoReload())


# --- sites ------------------------------------------------------------------------------------------------


async def test_admins_create_sites_and_whoever_works_there_reads_them(database_url: str) -> None:
    operator = await make_key(database_url, "operator", Scope.parse(["site:gym-a"]), name="op")
    async with serve(app_with(database_url, None)) as admin:
        r = await admin.post(
            "/v1/sites",
            json={
                "id": "gym-a",
                "name": "Gym A",
                "timezone": "Europe/Oslo",
                "opening_hours": OSLO_HOURS,
            },
        )
        assert r.status_code == 201, r.text
        assert r.json() | {"created_at": None} == {
            "site_id": "gym-a",
            "name": "Gym A",
            "timezone": "Europe/Oslo",
            "opening_hours": OSLO_HOURS,
            "created_at": None,
        }
        assert r.json()["created_at"] == NOW.isoformat().replace("+00:00", "Z")
        assert (await admin.post("/v1/sites", json={"id": "gym-b", "timezone": "UTC"})).status_code == 201
        # the id is taken (also by a site the ingester made): PATCH that one
        assert_problem(await admin.post("/v1/sites", json={"id": "gym-a", "timezone": "UTC"}), 409, "body.id")
        for bad, field in [
            ({"id": "gym-c", "timezone": "Mars/Olympus"}, "body.timezone"),
            ({"id": "gym-c", "timezone": "localtime"}, "body.timezone"),
            ({"id": "gym-c"}, "body.timezone"),
            ({"id": "gym c", "timezone": "UTC"}, "body.id"),
            ({"id": "gym-c", "timezone": "UTC", "opening_hours": {"mon": [["22:00", "06:00"]]}}, None),
            (
                {"id": "gym-c", "timezone": "UTC", "opening_hours": {"funday": [["06:00", "22:00"]]}},
                None,
            ),
        ]:
            body = assert_problem(await admin.post("/v1/sites", json=bad), 422)
            assert body["field"].startswith(field or "body.opening_hours"), body
        assert (await admin.get("/v1/sites/gym-c")).status_code == 404  # nothing of it was written

        # an operator sees the sites of its scope, and nothing of the others
        r = await admin.get("/v1/sites", headers=bearer(operator))
        assert [s["site_id"] for s in r.json()] == ["gym-a"]
        assert [s["site_id"] for s in (await admin.get("/v1/sites")).json()] == ["gym-a", "gym-b"]
        out = assert_problem(
            await admin.get("/v1/sites/gym-b", headers=bearer(operator)), 404, "path.site_id"
        )
        unknown = assert_problem(await admin.get("/v1/sites/gym-z", headers=bearer(operator)), 404)
        assert out["detail"].replace("gym-b", "gym-z") == unknown["detail"]
        assert_problem(
            await admin.patch("/v1/sites/gym-a", json={"name": "x"}, headers=bearer(operator)), 403
        )

        # PATCH changes what it names and keeps the rest
        r = await admin.patch("/v1/sites/gym-a", json={"opening_hours": {"sun": [["10:00", "16:00"]]}})
        assert r.status_code == 200, r.text
        assert (r.json()["name"], r.json()["timezone"]) == ("Gym A", "Europe/Oslo")
        assert r.json()["opening_hours"] == {"sun": [["10:00", "16:00"]]}
        r = await admin.patch("/v1/sites/gym-a", json={"name": None, "timezone": "America/New_York"})
        assert (r.json()["name"], r.json()["timezone"]) == (None, "America/New_York")
        assert_problem(await admin.patch("/v1/sites/gym-a", json={"timezone": None}), 422, "body.timezone")
        assert_problem(await admin.patch("/v1/sites/gym-a", json={"colour": "red"}), 422)
        assert_problem(await admin.patch("/v1/sites/gym-z", json={"name": "z"}), 404, "path.site_id")
    stored = await scalar(database_url, "SELECT opening_hours FROM sites WHERE site_id = 'gym-a'")
    assert stored == {"sun": [["10:00", "16:00"]]}


# --- devices ----------------------------------------------------------------------------------------------


async def test_registering_a_device_issues_its_login_once_and_retiring_revokes_it(
    database_url: str, store: MosquittoAuth
) -> None:
    sites(database_url, "gym-a", "gym-b")
    integrator = bearer(await make_key(database_url, "integrator", Scope.parse(["site:gym-a"]), name="int"))
    async with serve(app_with(database_url, store)) as admin:
        body = {"id": "bike-7", "kind": "bike", "vendor": "Acme", "model": "B1"}
        r = await admin.post("/v1/sites/gym-a/devices", json=body, headers=integrator)
        assert r.status_code == 201, r.text
        assert r.headers["cache-control"] == "no-store"
        got = r.json()
        assert got["broker"] == "issued"
        assert got["device"] | {"registered_at": None} == {
            "device_id": "bike-7",
            "site_id": "gym-a",
            "kind": "bike",
            "vendor": "Acme",
            "model": "B1",
            "gateway_id": None,
            "registered_at": None,
            "retired_at": None,
        }
        login = got["mqtt"]
        assert login["username"] == "bike-7"
        assert len(login["password"]) >= 22  # >= 128 random bits
        assert sorted(login["publishes"]) == sorted(
            device_topic("gym-a", "bike-7", k)
            for k in (TopicKind.TELEMETRY, TopicKind.STATE, TopicKind.META, TopicKind.RAW)
        )
        account = store.accounts().get("bike-7")
        assert isinstance(account, DeviceAccount)
        assert account.site == "gym-a"
        assert verify_password(login["password"], account.password_hash)
        assert login["password"] not in store.passwd_path.read_text() + store.state_path.read_text()

        # once registered, the id is taken: here (rotate instead), and at any other site (not named)
        again = assert_problem(await admin.post("/v1/sites/gym-a/devices", json=body), 409, "body.id")
        assert "rotate" in again["detail"]
        elsewhere = assert_problem(await admin.post("/v1/sites/gym-b/devices", json=body), 409, "body.id")
        assert "gym-a" not in elsewhere["detail"]
        # an integrator of gym-a at gym-b: 404, exactly as for a site that does not exist
        out = assert_problem(await admin.post("/v1/sites/gym-b/devices", json=body, headers=integrator), 404)
        unknown = assert_problem(
            await admin.post("/v1/sites/gym-z/devices", json=body, headers=integrator), 404
        )
        assert out["detail"].replace("gym-b", "gym-z") == unknown["detail"]
        assert_problem(await admin.post("/v1/sites/gym-a/devices", json=body | {"kind": "stepper"}), 422)

        r = await admin.get("/v1/sites/gym-a/devices", headers=integrator)
        assert [(d["device_id"], d["retired_at"]) for d in r.json()] == [("bike-7", None)]

        # a new password: the old one no longer matches
        r = await admin.post("/v1/sites/gym-a/devices/bike-7/rotate", headers=integrator)
        assert r.status_code == 200, r.text
        rotated = r.json()["mqtt"]["password"]
        account = store.accounts().get("bike-7")
        assert account is not None
        assert verify_password(rotated, account.password_hash)
        assert not verify_password(login["password"], account.password_hash)
        assert_problem(await admin.post("/v1/sites/gym-b/devices/bike-7/rotate"), 404, "path.device_id")

        # retired: the login is gone, the record and the binding to gym-a stay; retiring again changes nothing
        r = await admin.post("/v1/sites/gym-a/devices/bike-7/retire", headers=integrator)
        assert r.status_code == 200, r.text
        assert (r.json()["broker"], r.json()["device"]["retired_at"]) == ("revoked", "2026-11-25T12:00:00Z")
        assert "bike-7" not in store.accounts()
        assert "bike-7" not in store.passwd_path.read_text()
        r = await admin.post("/v1/sites/gym-a/devices/bike-7/retire")
        assert r.json()["device"]["retired_at"] == "2026-11-25T12:00:00Z"
        assert_problem(await admin.post("/v1/sites/gym-a/devices/bike-7/rotate"), 409, "path.device_id")
        assert_problem(await admin.post("/v1/sites/gym-b/devices", json=body), 409, "body.id")

        # registered again at its own site: a new login
        r = await admin.post("/v1/sites/gym-a/devices", json=body)
        assert r.status_code == 201, r.text
        assert r.json()["device"]["retired_at"] is None
        account = store.accounts().get("bike-7")
        assert account is not None
        assert verify_password(r.json()["mqtt"]["password"], account.password_hash)


async def test_a_device_heard_of_before_is_registered_at_its_own_site_only(
    database_url: str, store: MosquittoAuth
) -> None:
    """Under the ingester's ``register`` policy a device appears (unregistered) when it first reports; an
    integrator then registers it at that site, and nowhere else."""
    sites(database_url, "gym-a", "gym-b")
    first_seen = datetime(2026, 11, 1, tzinfo=UTC)
    with psycopg.connect(database_url) as conn:
        conn.execute(
            "INSERT INTO devices (device_id, site_id, kind, first_seen) "
            "VALUES ('rower-3', 'gym-a', 'rower', %s)",
            (first_seen,),
        )
    async with serve(app_with(database_url, store)) as admin:
        r = await admin.get("/v1/sites/gym-a/devices")
        assert r.json()[0]["registered_at"] is None
        body = {"id": "rower-3", "kind": "rower"}
        assert_problem(await admin.post("/v1/sites/gym-b/devices", json=body), 409, "body.id")
        assert_problem(await admin.post("/v1/sites/gym-a/devices/rower-3/rotate"), 409, "path.device_id")
        r = await admin.post("/v1/sites/gym-a/devices", json=body)
        assert r.status_code == 201, r.text
        assert r.json()["device"]["registered_at"] == "2026-11-25T12:00:00Z"
    assert await scalar(database_url, "SELECT first_seen FROM devices") == first_seen
    assert "rower-3" in store.accounts()


async def test_without_an_account_store_devices_are_recorded_and_logins_managed_elsewhere(
    database_url: str,
) -> None:
    sites(database_url, "gym-a")
    async with serve(app_with(database_url, None)) as admin:
        r = await admin.post("/v1/sites/gym-a/devices", json={"id": "tread-1", "kind": "treadmill"})
        assert r.status_code == 201, r.text
        assert (r.json()["broker"], r.json()["mqtt"]) == ("external", None)
        body = assert_problem(await admin.post("/v1/sites/gym-a/devices/tread-1/rotate"), 409)
        assert "VITALAB_BROKER_STATE_DIR" in body["detail"]
        r = await admin.post("/v1/sites/gym-a/devices/tread-1/retire")
        assert (r.json()["broker"], r.json()["device"]["retired_at"]) == ("external", "2026-11-25T12:00:00Z")


async def test_the_broker_namespace_is_shared_with_gateways_and_services(
    database_url: str, store: MosquittoAuth
) -> None:
    sites(database_url, "gym-a")
    store.add_service(Role.INGESTER, "ingest")
    async with serve(app_with(database_url, store)) as admin:
        body = assert_problem(
            await admin.post("/v1/sites/gym-a/devices", json={"id": "ingest", "kind": "bike"}), 409
        )
        assert "ingester" in body["detail"]
        # nothing was recorded: the registration is one transaction with the login
        assert await count(database_url, "devices") == 0


# --- gateways ---------------------------------------------------------------------------------------------


async def test_gateways_publish_for_exactly_the_devices_attached_to_them(
    database_url: str, store: MosquittoAuth
) -> None:
    sites(database_url, "gym-a", "gym-b")
    async with serve(app_with(database_url, store)) as admin:
        for device, site in [("strap-1", "gym-a"), ("strap-2", "gym-a"), ("strap-b", "gym-b")]:
            r = await admin.post(f"/v1/sites/{site}/devices", json={"id": device, "kind": "hr_strap"})
            assert r.status_code == 201, r.text
        r = await admin.post("/v1/sites/gym-a/gateways", json={"id": "gw-1", "devices": ["strap-1"]})
        assert r.status_code == 201, r.text
        assert r.json()["gateway"]["devices"] == ["strap-1"]
        gw_password = r.json()["mqtt"]["password"]
        publishes = set(r.json()["mqtt"]["publishes"])
        assert device_topic("gym-a", "strap-1", TopicKind.TELEMETRY) in publishes
        assert not any("strap-2" in t for t in publishes)
        gateway = store.accounts().get("gw-1")
        assert isinstance(gateway, GatewayAccount)
        assert gateway.devices == {"strap-1"}
        assert verify_password(gw_password, gateway.password_hash)

        # a device registered through the gateway: no login of its own, the gateway publishes for it
        r = await admin.post(
            "/v1/sites/gym-a/devices", json={"id": "bike-9", "kind": "bike", "gateway_id": "gw-1"}
        )
        assert (r.status_code, r.json()["broker"], r.json()["mqtt"]) == (201, "via_gateway", None)
        assert "bike-9" not in store.accounts()
        # attach: a device of the site; one of another site is unknown here (404, naming it)
        assert_problem(
            await admin.post(
                "/v1/sites/gym-a/gateways/gw-1/devices", json={"devices": ["strap-2", "strap-b"]}
            ),
            404,
            "body.devices.1",
        )
        r = await admin.post("/v1/sites/gym-a/gateways/gw-1/devices", json={"devices": ["strap-2"]})
        assert r.json()["gateway"]["devices"] == ["bike-9", "strap-1", "strap-2"]
        gateway = store.accounts().get("gw-1")
        assert isinstance(gateway, GatewayAccount)
        assert gateway.devices == {"bike-9", "strap-1", "strap-2"}
        assert verify_password(gw_password, gateway.password_hash)  # attaching keeps its password

        # a retired device: the gateway no longer publishes for it
        await admin.post("/v1/sites/gym-a/devices/strap-2/retire")
        gateway = store.accounts().get("gw-1")
        assert isinstance(gateway, GatewayAccount)
        assert gateway.devices == {"bike-9", "strap-1"}
        r = await admin.get("/v1/sites/gym-a/gateways")
        assert [(g["gateway_id"], g["devices"]) for g in r.json()] == [("gw-1", ["bike-9", "strap-1"])]
        assert (await admin.get("/v1/sites/gym-b/gateways")).json() == []

        # a gateway id is a broker username like a device's
        assert_problem(await admin.post("/v1/sites/gym-a/gateways", json={"id": "strap-1"}), 409)
        assert_problem(await admin.post("/v1/sites/gym-b/gateways", json={"id": "gw-1"}), 409)

        r = await admin.post("/v1/sites/gym-a/gateways/gw-1/rotate")
        assert r.status_code == 200, r.text
        rotated = r.json()["mqtt"]["password"]
        gateway = store.accounts().get("gw-1")
        assert gateway is not None
        assert verify_password(rotated, gateway.password_hash)

        r = await admin.post("/v1/sites/gym-a/gateways/gw-1/retire")
        assert (r.status_code, r.json()["broker"]) == (200, "revoked")
        assert "gw-1" not in store.accounts()
        assert_problem(await admin.post("/v1/sites/gym-a/gateways/gw-1/rotate"), 409, "path.gateway_id")
        assert_problem(
            await admin.post(
                "/v1/sites/gym-a/devices", json={"id": "bike-10", "kind": "bike", "gateway_id": "gw-1"}
            ),
            409,
            "body.gateway_id",
        )


async def test_the_schema_keeps_a_device_at_its_site_and_its_gateway(database_url: str) -> None:
    sites(database_url, "gym-a", "gym-b")
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("INSERT INTO gateways (gateway_id, site_id) VALUES ('gw-a', 'gym-a')")
        conn.execute("INSERT INTO devices (device_id, site_id, gateway_id) VALUES ('d-1', 'gym-a', 'gw-a')")
        with pytest.raises(psycopg.errors.IntegrityConstraintViolation, match="never changes"):
            conn.execute("UPDATE devices SET site_id = 'gym-b' WHERE device_id = 'd-1'")
        with pytest.raises(psycopg.errors.IntegrityConstraintViolation, match="never changes"):
            conn.execute("UPDATE gateways SET site_id = 'gym-b'")
        with pytest.raises(psycopg.errors.ForeignKeyViolation):  # a gateway of another site
            conn.execute(
                "INSERT INTO devices (device_id, site_id, gateway_id) VALUES ('d-2', 'gym-b', 'gw-a')"
            )
        with pytest.raises(psycopg.errors.CheckViolation):
            conn.execute(
                "UPDATE devices SET registered_at = %s, retired_at = %s", (NOW, NOW - timedelta(seconds=1))
            )


# --- end to end: the API, a real broker, the ingester -----------------------------------------------------


BrokerKind = Literal["mosquitto", "amqtt"]


@pytest.fixture(params=["mosquitto", "amqtt"])
def live_store(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[BrokerKind, int, MosquittoAuth]]:
    """An account store and a broker enforcing it: Mosquitto told by SIGHUP, or the in-process broker of
    `vitalab up` whose accounts the store swaps in place."""
    auth = MosquittoAuth(tmp_path / "auth", NoReload())
    auth.apply()
    if request.param == "mosquitto":
        proc, port, _log = _start_mosquitto(tmp_path, auth)
        auth.reloader = SignalReload(proc.pid)
        try:
            yield "mosquitto", port, auth
        finally:
            _stop(proc)
    else:
        live = LiveAccounts(auth.accounts())
        auth.reloader = live
        server = AmqttThread(live, free_port())
        server.start()
        try:
            yield "amqtt", server.port, auth
        finally:
            server.stop()


def telemetry(device: str, seq: int, t: datetime, power_w: float) -> bytes:
    return encode(TelemetryMessage(v=1, device=device, seq=seq, samples=[Sample(t=t, power_w=power_w)]))


async def publish(session: Session, topic: str, payload: bytes) -> int:
    return int((await asyncio.to_thread(session.publish, topic, payload)).value)


async def samples_of(url: str, where: str) -> int:
    return await count(url, "samples", where)


async def test_a_device_registered_through_the_api_publishes_until_it_is_retired(
    live_store: tuple[BrokerKind, int, MosquittoAuth], database_url: str
) -> None:
    kind, port, auth = live_store
    mosquitto = kind == "mosquitto"
    ingest = auth.add_service(Role.INGESTER, "ingest")
    settings = make_settings(
        ingest_client_id="ingest-registration",
        mqtt_protocol="5" if mosquitto else "3.1.1",
        ingest_share_group="ingest" if mosquitto else "",
    )
    target = MqttTarget(host="127.0.0.1", port=port, username="ingest", password=ingest.password)
    integrator = bearer(await make_key(database_url, "integrator", Scope.parse(["site:gym-a"]), name="int"))
    connect = Connector("127.0.0.1", port, mqtt.MQTTv5 if mosquitto else mqtt.MQTTv311)
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1)  # the ingester's receive clock
    try:
        async with serve(app_with(database_url, auth)) as admin:
            assert (await admin.post("/v1/sites", json={"id": "gym-a", "timezone": "UTC"})).status_code == 201
            logins: dict[str, Any] = {}
            for device in ("dev-a", "dev-b"):
                r = await admin.post(
                    "/v1/sites/gym-a/devices", json={"id": device, "kind": "bike"}, headers=integrator
                )
                assert r.status_code == 201, r.text
                logins[device] = r.json()["mqtt"]["password"]
            assert_not_authorized(await asyncio.to_thread(connect, None))
            a = await asyncio.to_thread(connect.login, "dev-a", logins["dev-a"])

            async with running_ingester(settings, target, database_url):
                # until the ingester has subscribed, messages have nowhere to go: probe until one is stored
                for seq in range(200):
                    await publish(
                        a,
                        device_topic("gym-a", "dev-a", TopicKind.TELEMETRY),
                        telemetry("dev-a", seq, start, 100),
                    )
                    if await samples_of(database_url, "device_id = 'dev-a'"):
                        break
                    await asyncio.sleep(0.2)
                else:
                    pytest.fail("dev-a's telemetry never reached the database")

                # dev-a cannot publish as dev-b, nor under another site
                spoof = await publish(
                    a, device_topic("gym-a", "dev-b", TopicKind.TELEMETRY), telemetry("dev-b", 1, start, 999)
                )
                elsewhere = await publish(
                    a, device_topic("gym-b", "dev-a", TopicKind.TELEMETRY), telemetry("dev-a", 2, start, 555)
                )
                if mosquitto:
                    assert (spoof, elsewhere) == (0x87, 0x87)
                marker = telemetry("dev-a", 1000, start + timedelta(seconds=2), 222)
                await publish(a, device_topic("gym-a", "dev-a", TopicKind.TELEMETRY), marker)
                # one publisher, one subscriber, in order: the refused ones would be stored before this one
                await wait_until(
                    lambda: samples_of(database_url, "device_id = 'dev-a' AND power_w = 222"),
                    what="the marker",
                )
                assert await samples_of(database_url, "device_id = 'dev-b' OR power_w IN (999, 555)") == 0

                # retired through the API: its open connection is dropped, and it cannot come back
                r = await admin.post("/v1/sites/gym-a/devices/dev-a/retire", headers=integrator)
                assert (r.status_code, r.json()["broker"]) == (200, "revoked")
                assert await asyncio.to_thread(a.disconnected.wait, 10), (
                    "the retired device is still connected"
                )
                assert_not_authorized(await asyncio.to_thread(connect, "dev-a", logins["dev-a"]))

                # a rotated password: the old one is refused, the new one publishes
                r = await admin.post("/v1/sites/gym-a/devices/dev-b/rotate", headers=integrator)
                assert_not_authorized(await asyncio.to_thread(connect, "dev-b", logins["dev-b"]))
                b = await asyncio.to_thread(connect.login, "dev-b", r.json()["mqtt"]["password"])
                await publish(
                    b, device_topic("gym-a", "dev-b", TopicKind.TELEMETRY), telemetry("dev-b", 5, start, 321)
                )
                await wait_until(
                    lambda: samples_of(database_url, "device_id = 'dev-b'"), what="dev-b's sample"
                )
    finally:
        await asyncio.to_thread(connect.close)
    assert await scalar(database_url, "SELECT array_agg(DISTINCT site_id) FROM samples") == ["gym-a"]
