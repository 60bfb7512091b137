"""First start of a deployment: service accounts and their client files, the TLS certificate."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.conftest import missing
from vitalab.broker import InvalidAccount, MosquittoAuth, Role, verify_password
from vitalab.broker.init import ServiceSpec, chown_tree, init_services
from vitalab.broker.tls import CertificateError, ensure_self_signed, subject_alt_names

SERVICES = [
    ServiceSpec.parse("ingest=ingester"),
    ServiceSpec.parse("api=live-view"),
    ServiceSpec.parse("monitor=monitor"),
    ServiceSpec.parse("simulator=simulator@demo"),
]


def test_service_specs() -> None:
    assert ServiceSpec.parse("live=live-view@gym-a,gym-b") == ServiceSpec(
        "live", Role.LIVE_VIEW, frozenset({"gym-a", "gym-b"})
    )
    assert ServiceSpec.parse("ingest=ingester") == ServiceSpec("ingest", Role.INGESTER, None)
    for bad, problem in [
        ("ingest", "expected"),
        ("x=root", "unknown role"),
        ("x=device", "issued per device"),
        ("sim=simulator", "exactly one site"),
        ("sim=simulator@a,b", "exactly one site"),
    ]:
        with pytest.raises(InvalidAccount, match=problem):
            ServiceSpec.parse(bad)


def test_init_creates_accounts_and_client_files(tmp_path: Path) -> None:
    auth = MosquittoAuth(tmp_path / "auth")
    clients = tmp_path / "clients"
    issued = init_services(auth, clients, SERVICES, host="mosquitto", port=1883)
    assert issued == ["ingest", "api", "monitor", "simulator"]
    accounts = auth.accounts()
    for spec in SERVICES:
        url = urlsplit((clients / f"{spec.username}.url").read_text().strip())
        assert (url.scheme, url.hostname, url.port, url.username) == (
            "mqtt",
            "mosquitto",
            1883,
            spec.username,
        )
        password = (clients / f"{spec.username}.password").read_text().strip()
        assert url.password == password
        assert verify_password(password, accounts.require(spec.username).password_hash)
        for path in (clients / f"{spec.username}.url", clients / f"{spec.username}.password"):
            assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert "user simulator" in auth.acl_path.read_text()


def test_init_is_idempotent_and_repairs_lost_client_files(tmp_path: Path) -> None:
    auth = MosquittoAuth(tmp_path / "auth")
    clients = tmp_path / "clients"
    init_services(auth, clients, SERVICES, host="mosquitto", port=1883)
    before = {p.name: p.read_text() for p in clients.iterdir()}
    assert init_services(auth, clients, SERVICES, host="mosquitto", port=1883) == []
    assert {p.name: p.read_text() for p in clients.iterdir()} == before

    (clients / "api.password").unlink()
    assert init_services(auth, clients, SERVICES, host="mosquitto", port=1883) == ["api"]
    fresh = (clients / "api.password").read_text().strip()
    assert fresh != before["api.password"].strip()
    assert verify_password(fresh, auth.accounts().require("api").password_hash)
    assert not verify_password(before["api.password"].strip(), auth.accounts().require("api").password_hash)

    # a client file that no longer matches (someone rotated the account by hand) is replaced too
    auth.rotate("monitor")
    assert init_services(auth, clients, SERVICES, host="mosquitto", port=1883) == ["monitor"]


def test_init_rotates_on_request(tmp_path: Path) -> None:
    auth = MosquittoAuth(tmp_path / "auth")
    clients = tmp_path / "clients"
    init_services(auth, clients, SERVICES, host="mosquitto", port=1883)
    old = (clients / "ingest.password").read_text()
    assert init_services(auth, clients, SERVICES, host="mosquitto", port=1883, rotate=["ingest"]) == [
        "ingest"
    ]
    assert (clients / "ingest.password").read_text() != old
    with pytest.raises(InvalidAccount, match="only the service accounts"):
        init_services(auth, clients, SERVICES, host="mosquitto", port=1883, rotate=["bike-01"])


def test_init_refuses_an_account_with_another_role(tmp_path: Path) -> None:
    auth = MosquittoAuth(tmp_path / "auth")
    auth.add_device("ingest", "demo")
    with pytest.raises(InvalidAccount, match="exists as a device"):
        init_services(auth, tmp_path / "clients", SERVICES, host="mosquitto", port=1883)


def test_self_signed_certificate(tmp_path: Path) -> None:
    if shutil.which("openssl") is None:
        missing("openssl is not installed")
    tls = tmp_path / "tls"
    assert ensure_self_signed(tls, ["mosquitto", "localhost", "127.0.0.1"])
    assert stat.S_IMODE((tls / "server.key").stat().st_mode) == 0o600
    text = subprocess.run(
        ["openssl", "x509", "-in", str(tls / "server.crt"), "-noout", "-text"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "DNS:mosquitto, DNS:localhost, IP Address:127.0.0.1" in text
    assert "prime256v1" in text
    assert not ensure_self_signed(tls, ["other"])  # an existing certificate is kept


def test_subject_alt_names() -> None:
    assert subject_alt_names(["broker.example.org", "::1"]) == "DNS:broker.example.org,IP:::1"
    with pytest.raises(CertificateError):
        subject_alt_names(["a,b"])


@pytest.mark.skipif(os.geteuid() != 0, reason="only root may give files away")
def test_root_keeps_the_owner_of_rewritten_files(tmp_path: Path) -> None:
    """An operator's `docker compose run` (root) must not leave the broker's 0600 files to root."""
    state = tmp_path / "auth"
    MosquittoAuth(state).apply()
    chown_tree([state], 10001, 10001)
    MosquittoAuth(state).add_device("bike-01", "demo")
    for path in state.iterdir():
        assert (path.stat().st_uid, path.stat().st_gid) == (10001, 10001), path


@pytest.mark.skipif(os.geteuid() != 0, reason="only root may give files away")
def test_chown_tree(tmp_path: Path) -> None:
    (tmp_path / "d" / "e").mkdir(parents=True)
    (tmp_path / "d" / "e" / "f").write_text("x")
    chown_tree([tmp_path / "d"], 10001, 10002)
    for path in (tmp_path / "d", tmp_path / "d" / "e", tmp_path / "d" / "e" / "f"):
        assert (path.stat().st_uid, path.stat().st_gid) == (10001, 10002)
