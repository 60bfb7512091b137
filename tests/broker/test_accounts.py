"""The account model: who may publish and read what, the identity rule, filter coverage."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st
from paho.mqtt.client import topic_matches_sub

from vitalab.broker import (
    AccountExists,
    Accounts,
    DeviceAccount,
    GatewayAccount,
    IngesterAccount,
    InvalidAccount,
    LiveViewAccount,
    MonitorAccount,
    SimulatorAccount,
    UnknownAccount,
    filter_covers,
    hash_password,
    permissions,
)

H = hash_password("x")


def device(name: str, site: str = "gym-a") -> DeviceAccount:
    return DeviceAccount(username=name, site=site, password_hash=H)


def gateway(name: str, devices: list[str], site: str = "gym-a") -> GatewayAccount:
    return GatewayAccount(username=name, site=site, devices=frozenset(devices), password_hash=H)


# --- permissions --------------------------------------------------------------------------------------------


def test_device_publishes_its_four_topics_in_its_site_and_reads_only_its_acks() -> None:
    granted = permissions(device("bike-01"))
    assert granted.publish == tuple(
        f"vitalab/v1/gym-a/dev/bike-01/{kind}" for kind in ("telemetry", "state", "meta", "raw")
    )
    assert granted.read == ("vitalab/v1/gym-a/dev/bike-01/ack",)
    assert granted.may_subscribe("vitalab/v1/gym-a/dev/bike-01/ack")
    assert not granted.may_read("vitalab/v1/gym-a/dev/bike-02/ack")
    assert not granted.may_publish("vitalab/v1/gym-a/dev/bike-01/ack")
    assert granted.may_publish("vitalab/v1/gym-a/dev/bike-01/telemetry")
    assert not granted.may_publish("vitalab/v1/gym-b/dev/bike-01/telemetry")
    assert not granted.may_publish("vitalab/v1/gym-a/dev/bike-02/telemetry")
    assert not granted.may_publish("vitalab/v1/gym-a/dev/bike-01/telemetry/more")
    assert not granted.may_publish("vitalab/v1/gym-a/dev/+/telemetry")  # wildcards are not topics
    assert not granted.may_subscribe("vitalab/v1/gym-a/dev/bike-01/telemetry")


def test_gateway_publishes_status_and_decoded_data_for_its_devices_and_reads_their_raw() -> None:
    granted = permissions(gateway("gw-1", ["strap-2", "bike-01"]))
    assert granted.publish == (
        "vitalab/v1/gym-a/gw/gw-1/status",
        "vitalab/v1/gym-a/dev/bike-01/telemetry",
        "vitalab/v1/gym-a/dev/bike-01/state",
        "vitalab/v1/gym-a/dev/bike-01/meta",
        "vitalab/v1/gym-a/dev/strap-2/telemetry",
        "vitalab/v1/gym-a/dev/strap-2/state",
        "vitalab/v1/gym-a/dev/strap-2/meta",
    )
    assert granted.read == (
        "vitalab/v1/gym-a/dev/bike-01/raw",
        "vitalab/v1/gym-a/dev/strap-2/raw",
        "vitalab/v1/gym-a/gw/gw-1/ack",
    )
    assert not granted.may_read("vitalab/v1/gym-a/gw/gw-2/ack")
    assert not granted.may_read("vitalab/v1/gym-a/dev/bike-01/ack")
    assert not granted.may_publish("vitalab/v1/gym-a/gw/gw-1/ack")
    assert not granted.may_publish("vitalab/v1/gym-a/dev/bike-01/raw")
    assert not granted.may_publish("vitalab/v1/gym-a/gw/gw-2/status")
    assert granted.may_subscribe("vitalab/v1/gym-a/dev/bike-01/raw")
    assert not granted.may_subscribe("vitalab/v1/gym-a/dev/+/raw")


def test_readers_read_the_platform_topics_and_only_ingesters_publish_commit_acks() -> None:
    everywhere = permissions(IngesterAccount(username="ingest", password_hash=H))
    assert everywhere.publish == ("vitalab/v1/+/gw/+/ack", "vitalab/v1/+/dev/+/ack")
    assert not everywhere.may_publish("vitalab/v1/gym-a/dev/bike-01/telemetry")
    assert not everywhere.may_read("vitalab/v1/gym-a/gw/gw-1/ack")
    one_ingester = permissions(IngesterAccount(username="i", password_hash=H, sites=frozenset({"gym-a"})))
    assert one_ingester.may_publish("vitalab/v1/gym-a/gw/gw-1/ack")
    assert not one_ingester.may_publish("vitalab/v1/gym-b/gw/gw-1/ack")
    assert everywhere.read == (
        "vitalab/v1/+/dev/+/telemetry",
        "vitalab/v1/+/dev/+/state",
        "vitalab/v1/+/dev/+/meta",
        "vitalab/v1/+/gw/+/status",
    )
    assert everywhere.may_subscribe("$share/ingest/vitalab/v1/+/dev/+/telemetry")
    assert not everywhere.may_subscribe("vitalab/v1/#")
    assert not everywhere.may_read("vitalab/v1/gym-a/dev/bike-01/raw")

    one_site = permissions(LiveViewAccount(username="live", password_hash=H, sites=frozenset({"gym-a"})))
    assert one_site.publish == ()
    assert one_site.may_read("vitalab/v1/gym-a/dev/bike-01/telemetry")
    assert not one_site.may_read("vitalab/v1/gym-b/dev/bike-01/telemetry")
    assert not one_site.may_subscribe("vitalab/v1/+/dev/+/telemetry")


def test_monitor_reads_sys_only_and_simulator_publishes_within_its_site() -> None:
    monitor = permissions(MonitorAccount(username="monitor", password_hash=H))
    assert (monitor.publish, monitor.read) == ((), ("$SYS/#",))
    simulator = permissions(SimulatorAccount(username="sim", site="demo", password_hash=H))
    assert simulator.read == ("vitalab/v1/demo/gw/+/ack", "vitalab/v1/demo/dev/+/ack")
    assert not simulator.may_read("vitalab/v1/other/gw/sim-gw/ack")
    assert simulator.may_publish("vitalab/v1/demo/dev/anything-01/telemetry")
    assert simulator.may_publish("vitalab/v1/demo/gw/sim-gw/status")
    assert not simulator.may_publish("vitalab/v1/demo/dev/anything-01/raw")
    assert not simulator.may_publish("vitalab/v1/other/dev/anything-01/telemetry")


# --- the set and its rules -------------------------------------------------------------------------------


def test_a_device_belongs_to_one_site() -> None:
    with pytest.raises(InvalidAccount, match="belongs to site 'gym-a', not 'gym-b'"):
        Accounts([device("bike-01", "gym-a"), gateway("gw-b", ["bike-01"], site="gym-b")])
    with pytest.raises(InvalidAccount, match="belongs to site"):
        Accounts([gateway("gw-a", ["strap-1"]), gateway("gw-b", ["strap-1"], site="gym-b")])
    # the same site: a device of its own may also be attached, two gateways may share a device
    both = Accounts([device("raw-1"), gateway("gw-a", ["raw-1", "strap-1"]), gateway("gw-b", ["strap-1"])])
    assert both.device_sites() == {"raw-1": "gym-a", "strap-1": "gym-a"}


def test_usernames_are_one_namespace() -> None:
    accounts = Accounts([IngesterAccount(username="ingest", password_hash=H)])
    with pytest.raises(AccountExists, match="ingester"):
        accounts.with_account(device("ingest"))
    with pytest.raises(AccountExists):
        Accounts([device("x1"), gateway("x1", [])])


@pytest.mark.parametrize("bad", ["a/b", "a+b", "a#", "with space", "-leading", "x" * 65, "", "a:b", "$SYS"])
def test_ids_must_be_topic_ids(bad: str) -> None:
    with pytest.raises(InvalidAccount):
        Accounts([device(bad)])
    with pytest.raises(InvalidAccount):
        Accounts([device("ok-1", site=bad)])
    with pytest.raises(InvalidAccount):
        Accounts([gateway("gw-1", [bad])])


def test_other_rules() -> None:
    with pytest.raises(InvalidAccount, match="empty set of sites"):
        Accounts([LiveViewAccount(username="live", password_hash=H, sites=frozenset())])
    with pytest.raises(InvalidAccount, match="not a \\$7\\$"):
        Accounts([DeviceAccount(username="d1", site="s", password_hash="plain")])
    accounts = Accounts([device("d1")])
    with pytest.raises(InvalidAccount, match="cannot become"):
        accounts.replacing(gateway("d1", []))
    with pytest.raises(UnknownAccount):
        accounts.without("d2")
    with pytest.raises(UnknownAccount, match="no gateway account 'd1'"):
        accounts.require("d1", GatewayAccount)
    assert accounts.without("d1") == Accounts()
    assert accounts.permissions("nobody") is None


# --- filter coverage -----------------------------------------------------------------------------------

LEVELS = ["a", "b", "+", "#"]


def _filters(max_levels: int) -> list[str]:
    found = []
    for n in range(1, max_levels + 1):
        for parts in itertools.product(LEVELS, repeat=n):
            if "#" in parts[:-1]:
                continue  # '#' only last
            found.append("/".join(parts))
    return found


# topics over a, b and a level no filter names ('c' stands for every other word)
TOPICS = ["/".join(p) for n in range(1, 5) for p in itertools.product(["a", "b", "c"], repeat=n)]


def test_filter_covers_exactly_on_a_finite_universe() -> None:
    """covers(allowed, requested) <=> every topic matching `requested` matches `allowed` (checked with
    paho's matcher over every topic of up to four levels)."""
    filters = _filters(3)
    for allowed in filters:
        for requested in filters:
            expected = all(topic_matches_sub(allowed, t) for t in TOPICS if topic_matches_sub(requested, t))
            assert filter_covers(allowed, requested) == expected, (allowed, requested)


words = st.sampled_from(["vitalab", "v1", "gym-a", "dev", "x", "+"])


@given(
    allowed=st.lists(words, min_size=1, max_size=6).map("/".join),
    requested=st.lists(words, min_size=1, max_size=6).map("/".join),
    hash_tail=st.booleans(),
    topic=st.lists(st.sampled_from(["vitalab", "v1", "gym-a", "dev", "x", "y"]), min_size=1, max_size=7),
)
def test_covered_filters_never_widen(allowed: str, requested: str, hash_tail: bool, topic: list[str]) -> None:
    if hash_tail:
        allowed += "/#"
    concrete = "/".join(topic)
    if filter_covers(allowed, requested) and topic_matches_sub(requested, concrete):
        assert topic_matches_sub(allowed, concrete)
