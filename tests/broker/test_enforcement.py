"""The account rules enforced by a real Mosquitto (MQTT 5) and by the embedded amqtt broker (MQTT 3.1.1),
both fed from one :class:`~vitalab.broker.MosquittoAuth` store.

How absence is proved without sleeping: a broker handles one connection's packets in order and queues a
message for its subscribers while handling the PUBLISH. So when a witness with read access receives a
later, allowed "sentinel" from the same connection, a forbidden message sent before it would already have
arrived. Mosquitto (MQTT 5) also answers a denied PUBLISH with PUBACK reason 0x87; MQTT 3.1.1 has no such
code, amqtt acknowledges and drops.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from amqtt.contexts import Action

from tests.broker.clients import NOT_AUTHORIZED, Connector, Session, assert_not_authorized, token
from tests.broker.conftest import BrokerUnderTest
from vitalab.broker import Role

SITE, OTHER_SITE = "gym-a", "gym-b"
READ_FILTERS = [
    "vitalab/v1/+/dev/+/telemetry",
    "vitalab/v1/+/dev/+/state",
    "vitalab/v1/+/dev/+/meta",
    "vitalab/v1/+/gw/+/status",
]


def tel(device: str, site: str = SITE) -> str:
    return f"vitalab/v1/{site}/dev/{device}/telemetry"


def status(gateway: str, site: str = SITE) -> str:
    return f"vitalab/v1/{site}/gw/{gateway}/status"


@dataclass
class Deployment:
    broker: BrokerUnderTest
    connect: Connector

    def login(self, username: str, **kwargs: object) -> Session:
        return self.connect.login(username, self.broker.passwords[username], **kwargs)

    def witness(self) -> Session:
        """The ingester, subscribed to everything it may read."""
        ingest = self.login("ingest")
        for topic_filter in READ_FILTERS:
            assert not ingest.subscribe(topic_filter)[0].is_failure
        return ingest

    def denied(self, session: Session, topic: str) -> None:
        """Publish something forbidden; under MQTT 5 the broker must say so."""
        reason = session.publish(topic, b"forbidden " + token())
        if self.broker.protocol == 5:
            assert reason.value == NOT_AUTHORIZED, f"{topic}: {reason}"
        else:
            assert not reason.is_failure  # MQTT 3.1.1: acknowledged, and dropped (proved by the witness)

    def sentinel(self, session: Session, topic: str, witness: Session) -> None:
        """An allowed message last; the witness must receive exactly it, nothing before it."""
        payload = token()
        assert not session.publish(topic, payload).is_failure
        received = witness.wait_for(topic, payload)
        assert [(m.topic, m.payload) for m in received] == [(topic, payload)], (
            "a forbidden message got through"
        )


@pytest.fixture
def deployment(broker: BrokerUnderTest, connect: Connector) -> Deployment:
    auth = broker.auth
    for device in ("dev-a", "dev-b", "raw-1"):
        broker.keep(auth.add_device(device, SITE))
    broker.keep(auth.add_device("dev-c", OTHER_SITE))
    broker.keep(auth.add_gateway("gw-1", SITE, ["strap-1", "strap-2", "raw-1"]))
    broker.keep(auth.add_gateway("gw-2", SITE, ["strap-3"]))
    broker.keep(auth.add_service(Role.INGESTER, "ingest"))
    broker.keep(auth.add_service(Role.LIVE_VIEW, "live", sites=[SITE]))
    return Deployment(broker, connect)


# --- authentication ----------------------------------------------------------------------------------------


def test_anonymous_is_refused(deployment: Deployment) -> None:
    assert_not_authorized(deployment.connect(None))


@pytest.mark.parametrize(
    ("username", "password"),
    [("dev-a", "not-the-password"), ("nobody", "whatever"), ("dev-a", "")],
    ids=["wrong-password", "unknown-user", "empty-password"],
)
def test_bad_credentials_are_refused(deployment: Deployment, username: str, password: str) -> None:
    assert_not_authorized(deployment.connect(username, password))


def test_one_devices_password_does_not_open_another(deployment: Deployment) -> None:
    assert deployment.connect("dev-b", deployment.broker.passwords["dev-a"]).refused


# --- devices ----------------------------------------------------------------------------------------------


def test_device_publishes_its_own_topics(deployment: Deployment) -> None:
    witness = deployment.witness()
    device = deployment.login("dev-a")
    for kind in ("telemetry", "state", "meta"):
        topic = f"vitalab/v1/{SITE}/dev/dev-a/{kind}"
        payload = token()
        assert not device.publish(topic, payload).is_failure
        message = witness.next_message()
        assert (message.topic, message.payload) == (topic, payload)


def test_device_cannot_publish_for_another_device(deployment: Deployment) -> None:
    witness = deployment.witness()
    device = deployment.login("dev-a")
    for kind in ("telemetry", "state", "meta"):
        deployment.denied(device, f"vitalab/v1/{SITE}/dev/dev-b/{kind}")
    deployment.denied(device, tel("strap-1"))  # a gateway's device
    deployment.sentinel(device, tel("dev-a"), witness)


def test_device_cannot_publish_under_another_site(deployment: Deployment) -> None:
    witness = deployment.witness()
    device = deployment.login("dev-a")
    deployment.denied(device, tel("dev-a", OTHER_SITE))
    deployment.denied(device, tel("dev-c", OTHER_SITE))
    deployment.sentinel(device, tel("dev-a"), witness)

    elsewhere = deployment.login("dev-c")
    deployment.denied(elsewhere, tel("dev-c", SITE))
    deployment.sentinel(elsewhere, tel("dev-c", OTHER_SITE), witness)


def test_device_cannot_publish_as_a_gateway(deployment: Deployment) -> None:
    witness = deployment.witness()
    device = deployment.login("dev-a")
    deployment.denied(device, status("dev-a"))
    deployment.denied(device, status("gw-1"))
    deployment.sentinel(device, tel("dev-a"), witness)


def test_device_reads_nothing(deployment: Deployment) -> None:
    device = deployment.login("dev-a")
    reasons = device.subscribe("vitalab/v1/#")
    if deployment.broker.kind == "amqtt":
        assert reasons[0].is_failure  # refused outright
        return
    # Mosquitto grants every SUBSCRIBE and checks `read` per delivered message. It queues a copy for each
    # permitted subscriber while handling the PUBLISH, before the PUBACK, on one connection in order: a
    # copy for the device itself would arrive before the PUBACK that publish() waits for.
    assert not reasons[0].is_failure
    witness = deployment.witness()
    payload = token()
    assert not device.publish(tel("dev-a"), payload).is_failure
    assert witness.next_message().payload == payload
    assert device.messages.empty()


# --- gateways ---------------------------------------------------------------------------------------------


def test_gateway_is_confined_to_its_devices(deployment: Deployment) -> None:
    witness = deployment.witness()
    gateway = deployment.login("gw-1")
    allowed = [
        (status("gw-1"), token()),
        (tel("strap-1"), token()),
        (f"vitalab/v1/{SITE}/dev/strap-2/meta", token()),
    ]
    for topic, payload in allowed:
        assert not gateway.publish(topic, payload).is_failure
    deployment.denied(gateway, status("gw-2"))  # another gateway's status
    deployment.denied(gateway, tel("strap-3"))  # a device of gw-2
    deployment.denied(gateway, tel("dev-a"))  # a device with its own login, not attached
    deployment.denied(gateway, tel("strap-1", OTHER_SITE))  # its device, but under another site
    deployment.denied(gateway, status("gw-1", OTHER_SITE))
    sentinel = token()
    assert not gateway.publish(status("gw-1"), sentinel).is_failure
    received = witness.wait_for(status("gw-1"), sentinel)
    assert [(m.topic, m.payload) for m in received] == [*allowed, (status("gw-1"), sentinel)]


def test_gateway_reads_the_raw_frames_of_its_devices(deployment: Deployment) -> None:
    gateway = deployment.login("gw-1")
    raw_topic = f"vitalab/v1/{SITE}/dev/raw-1/raw"
    assert not gateway.subscribe(raw_topic)[0].is_failure
    device = deployment.login("raw-1")
    payload = token()
    assert not device.publish(raw_topic, payload).is_failure
    message = gateway.next_message()
    assert (message.topic, message.payload) == (raw_topic, payload)


def test_embedded_broker_refuses_a_gateway_subscription_wider_than_its_devices(
    deployment: Deployment,
) -> None:
    if deployment.broker.kind != "amqtt":
        pytest.skip("Mosquitto grants every SUBSCRIBE and filters deliveries (test_device_reads_nothing)")
    gateway = deployment.login("gw-1")
    assert gateway.subscribe(f"vitalab/v1/{SITE}/dev/+/raw")[0].is_failure
    assert gateway.subscribe(tel("strap-1"))[0].is_failure  # it publishes telemetry, it does not read it


# --- wills ------------------------------------------------------------------------------------------------


def test_will_only_on_a_topic_the_account_may_publish(deployment: Deployment) -> None:
    if deployment.broker.kind == "amqtt":
        # amqtt would publish a will unchecked, so the plugin refuses such a CONNECT
        refused = deployment.connect("gw-1", deployment.broker.passwords["gw-1"], will=(status("gw-2"), b"x"))
        assert refused.refused
        deployment.login("gw-1", will=(status("gw-1"), b"offline"))
        return
    # Mosquitto accepts the CONNECT and checks the will when it would publish it. A session take-over (the
    # same client id connecting again) publishes the old connection's will while handling the new CONNECT,
    # before anything the new connection sends: first a positive control, then the forbidden will.
    witness = deployment.witness()
    for will_topic, expected in ((status("gw-1"), True), (status("gw-2"), False)):
        will = (will_topic, b"will " + token())
        deployment.login("gw-1", client_id="gw-1-conn", will=will)
        taker = deployment.login("gw-1", client_id="gw-1-conn")
        sentinel = token()
        assert not taker.publish(status("gw-1"), sentinel).is_failure
        received = [(m.topic, m.payload) for m in witness.wait_for(status("gw-1"), sentinel)]
        assert received == ([will] if expected else []) + [(status("gw-1"), sentinel)]
        taker.client.disconnect()
        assert taker.disconnected.wait(10)


# --- platform accounts ---------------------------------------------------------------------------------


def test_commit_acks_go_from_the_ingester_to_their_gateway_only(deployment: Deployment) -> None:
    ingest = deployment.login("ingest")
    own, other = f"vitalab/v1/{SITE}/gw/gw-1/ack", f"vitalab/v1/{SITE}/gw/gw-2/ack"
    gw1, gw2 = deployment.login("gw-1"), deployment.login("gw-2")
    assert not gw1.subscribe(own)[0].is_failure
    assert not gw2.subscribe(other)[0].is_failure
    prying = gw2.subscribe(own)[0]
    if deployment.broker.kind == "amqtt":
        assert prying.is_failure  # refused outright
    payload = token()
    assert not ingest.publish(own, payload).is_failure
    message = gw1.next_message()
    assert (message.topic, message.payload) == (own, payload)
    # gw-2 gets its own ack next, and nothing before it: gw-1's never reached it
    deployment.sentinel(ingest, other, gw2)
    deployment.denied(gw1, own)  # a gateway cannot forge acks, not even on its own topic
    deployment.sentinel(ingest, own, gw1)  # (its forged one would have reached it first)
    device = deployment.login("dev-a")
    deployment.denied(device, f"vitalab/v1/{SITE}/dev/dev-a/ack")


def test_ingester_cannot_publish(deployment: Deployment) -> None:
    ingest = deployment.login("ingest")
    topics = [tel("dev-a"), f"vitalab/v1/{SITE}/dev/dev-a/state", status("gw-1")]
    if deployment.broker.kind == "mosquitto":
        for topic in topics:
            assert ingest.publish(topic, b"forbidden").value == NOT_AUTHORIZED, topic
        return
    # MQTT 3.1.1 gives no reason code and the ingester has nothing it may publish as a sentinel: ask the
    # running broker's plugin chain about the connected ingester's real session.
    server = deployment.broker.amqtt
    assert server is not None
    (session,) = [s for s, _h in server.broker.sessions.values() if s.username == "ingest"]

    def decisions(topic: str, action: Action) -> list[object]:
        async def ask() -> dict[object, object]:
            result: dict[object, object] = await server.broker.plugins_manager.map_plugin_topic(
                session=session, topic=topic, action=action
            )
            return result

        found = list(server.call(ask).values())
        assert len(found) == 1, "one topic plugin expected"
        return found

    for topic in topics:
        assert decisions(topic, Action.PUBLISH) == [False], topic
    assert decisions(tel("dev-a"), Action.RECEIVE) == [True]  # the same chain lets it read


def test_live_view_reads_only_its_site(deployment: Deployment) -> None:
    live = deployment.login("live")
    if deployment.broker.kind == "amqtt":
        assert live.subscribe("vitalab/v1/+/dev/+/telemetry")[0].is_failure  # wider than gym-a
        assert not live.subscribe(f"vitalab/v1/{SITE}/dev/+/telemetry")[0].is_failure
    else:
        assert not live.subscribe("vitalab/v1/+/dev/+/telemetry")[0].is_failure
    # gym-b's message is acknowledged (so queued for every permitted subscriber) before gym-a's is sent
    elsewhere, here = deployment.login("dev-c"), deployment.login("dev-a")
    assert not elsewhere.publish(tel("dev-c", OTHER_SITE), b"other site").is_failure
    deployment.sentinel(here, tel("dev-a"), live)


# --- revocation and rotation ----------------------------------------------------------------------------


def test_revoked_device_is_dropped_and_refused(deployment: Deployment) -> None:
    witness = deployment.witness()
    revoked, control = deployment.login("dev-a"), deployment.login("dev-b")
    deployment.broker.auth.revoke("dev-a")

    assert revoked.disconnected.wait(10), "the revoked device is still connected"
    assert_not_authorized(deployment.connect("dev-a", deployment.broker.passwords["dev-a"]))
    # everyone else keeps their connection and rights
    assert not control.disconnected.is_set()
    deployment.sentinel(control, tel("dev-b"), witness)


def test_rotated_password_replaces_the_old_one(deployment: Deployment) -> None:
    old = deployment.login("dev-a")
    fresh = deployment.broker.keep(deployment.broker.auth.rotate("dev-a"))
    assert old.disconnected.wait(10), "a connection made with the old password survived the rotation"
    # one character changed, never to itself (a random password starts with "x" one time in 64)
    wrong = ("y" if fresh.password[0] == "x" else "x") + fresh.password[1:]
    assert deployment.connect("dev-a", wrong).refused
    witness = deployment.witness()
    deployment.sentinel(deployment.login("dev-a"), tel("dev-a"), witness)


def test_detached_device_is_no_longer_the_gateways(deployment: Deployment) -> None:
    witness = deployment.witness()
    gateway = deployment.login("gw-1")
    deployment.sentinel(gateway, tel("strap-2"), witness)
    deployment.broker.auth.detach("gw-1", ["strap-2"])
    # the gateway stays connected (its password did not change); wait until the broker took the new ACL
    wait_for_acl(deployment, gateway, tel("strap-2"), witness)
    deployment.denied(gateway, tel("strap-2"))
    deployment.sentinel(gateway, tel("strap-1"), witness)


def wait_for_acl(deployment: Deployment, gateway: Session, probe: str, witness: Session) -> None:
    """Mosquitto applies an ACL change at its next SIGHUP, asynchronously: probe with allowed/denied pairs
    until the detached topic stops arriving (each round is proved by its own sentinel)."""
    for _round in range(200):
        payload = token()
        gateway.publish(probe, payload)
        sentinel = token()
        gateway.publish(status("gw-1"), sentinel)
        received = [m.payload for m in witness.wait_for(status("gw-1"), sentinel)]
        if payload not in received:
            return
    pytest.fail("the broker never applied the ACL change")
