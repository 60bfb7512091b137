"""MosquittoAuth: the account store's files, its lock, its reloads."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from vitalab.broker import (
    AccountExists,
    Accounts,
    GatewayAccount,
    GenerationReload,
    InvalidAccount,
    MosquittoAuth,
    ReloadError,
    Role,
    SignalReload,
    StateFileError,
    UnknownAccount,
    render_acl,
    verify_password,
)
from vitalab.broker.credentials import parse_password_file


class Recorder:
    """A reloader that remembers what it was given."""

    def __init__(self) -> None:
        self.calls: list[Accounts] = []

    def reload(self, accounts: Accounts) -> None:
        self.calls.append(accounts)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_issued_password_is_hashed_everywhere_and_files_are_private(tmp_path: Path) -> None:
    recorder = Recorder()
    auth = MosquittoAuth(tmp_path / "auth", recorder)
    issued = auth.add_device("bike-01", "gym-a")
    assert issued.role is Role.DEVICE
    assert issued.password not in repr(issued)

    for path in (auth.state_path, auth.passwd_path, auth.acl_path):
        assert _mode(path) == 0o600, path
        assert issued.password not in path.read_text(), f"the secret is stored in {path.name}"
    assert _mode(auth.state_dir) == 0o700
    hashes = parse_password_file(auth.passwd_path.read_text())
    assert verify_password(issued.password, hashes["bike-01"])
    assert auth.acl_path.read_text() == render_acl(auth.accounts())
    assert [len(a) for a in recorder.calls] == [1]
    assert sorted(p.name for p in auth.state_dir.iterdir()) == [".lock", "accounts.json", "acl", "passwd"]


def test_state_survives_a_new_store_object(tmp_path: Path) -> None:
    first = MosquittoAuth(tmp_path)
    first.add_gateway("gw-1", "gym-a", ["strap-1"])
    first.add_service(Role.LIVE_VIEW, "live", sites=["gym-a"])
    again = MosquittoAuth(tmp_path).accounts()
    assert again == first.accounts()
    gateway = again.require("gw-1", GatewayAccount)
    assert isinstance(gateway, GatewayAccount)
    assert gateway.devices == frozenset({"strap-1"})


def test_files_are_replaced_not_rewritten_in_place(tmp_path: Path) -> None:
    auth = MosquittoAuth(tmp_path)
    auth.add_device("bike-01", "gym-a")
    with auth.passwd_path.open() as reader:  # the broker may be reading while we write
        before = reader.read()
        auth.add_device("bike-02", "gym-a")
        reader.seek(0)
        assert reader.read() == before  # the old file, intact
    assert "bike-02:" in auth.passwd_path.read_text()


def test_failed_change_leaves_everything_as_it_was(tmp_path: Path) -> None:
    recorder = Recorder()
    auth = MosquittoAuth(tmp_path, recorder)
    auth.add_device("bike-01", "gym-a")
    files = {p: p.read_bytes() for p in (auth.state_path, auth.passwd_path, auth.acl_path)}
    with pytest.raises(AccountExists):
        auth.add_gateway("bike-01", "gym-a")
    with pytest.raises(InvalidAccount, match="belongs to site"):
        auth.add_gateway("gw-9", "gym-b", ["bike-01"])
    with pytest.raises(UnknownAccount):
        auth.revoke("nobody")
    with pytest.raises(InvalidAccount):
        auth.add_service(Role.SIMULATOR, "sim")  # no site
    assert {p: p.read_bytes() for p in files} == files
    assert len(recorder.calls) == 1


def test_concurrent_registrations_all_land(tmp_path: Path) -> None:
    """Eight threads register at once (each with its own store object, as API workers would)."""
    n = 8
    barrier = threading.Barrier(n)
    errors: list[BaseException] = []
    passwords: dict[str, str] = {}

    def register(i: int) -> None:
        auth = MosquittoAuth(tmp_path)
        barrier.wait()
        try:
            passwords[f"dev-{i}"] = auth.add_device(f"dev-{i}", "gym-a").password
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=register, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    hashes = parse_password_file((tmp_path / "passwd").read_text())
    assert set(hashes) == set(passwords)
    assert all(verify_password(passwords[u], h) for u, h in hashes.items())


def test_concurrent_claims_of_one_id_leave_one_winner(tmp_path: Path) -> None:
    n = 6
    barrier = threading.Barrier(n)
    outcomes: list[str] = []
    lock = threading.Lock()

    def claim(site: str) -> None:
        auth = MosquittoAuth(tmp_path)
        barrier.wait()
        try:
            auth.add_device("bike-01", site)
            result = site
        except AccountExists:
            result = "refused"
        with lock:
            outcomes.append(result)

    threads = [threading.Thread(target=claim, args=(f"gym-{i}",)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [o for o in outcomes if o != "refused"]
    assert len(winners) == 1
    account = MosquittoAuth(tmp_path).accounts().require("bike-01")
    assert getattr(account, "site", None) == winners[0]


def test_rotate_keeps_everything_but_the_password(tmp_path: Path) -> None:
    auth = MosquittoAuth(tmp_path)
    old = auth.add_gateway("gw-1", "gym-a", ["strap-1"])
    auth.attach("gw-1", ["strap-2"])
    new = auth.rotate("gw-1")
    gateway = auth.accounts().require("gw-1")
    assert isinstance(gateway, GatewayAccount)
    assert gateway.devices == frozenset({"strap-1", "strap-2"})
    assert verify_password(new.password, gateway.password_hash)
    assert not verify_password(old.password, gateway.password_hash)
    auth.detach("gw-1", ["strap-1"])
    gateway = auth.accounts().require("gw-1")
    assert isinstance(gateway, GatewayAccount)
    assert gateway.devices == frozenset({"strap-2"})


def test_unreadable_state_is_a_typed_error(tmp_path: Path) -> None:
    auth = MosquittoAuth(tmp_path)
    auth.state_path.write_text("{not json")
    with pytest.raises(StateFileError, match="not JSON"):
        auth.accounts()
    auth.state_path.write_text('{"version": 2, "accounts": []}')
    with pytest.raises(StateFileError, match="state version 2"):
        auth.accounts()
    auth.state_path.write_text('{"version": 1, "accounts": [{"role": "root", "username": "x"}]}')
    with pytest.raises(StateFileError, match="not an account state file"):
        auth.add_device("bike-01", "gym-a")  # refuses to overwrite what it cannot read


def test_signal_reload_reaches_the_process_and_reports_failures(tmp_path: Path) -> None:
    # a child that blocks SIGHUP, says it is ready, then waits for one and says so
    code = (
        "import signal; signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGHUP]); "
        "print('ready', flush=True); signal.sigwait([signal.SIGHUP]); print('hup', flush=True)"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready"
        pid_file = tmp_path / "broker.pid"
        pid_file.write_text(f"{child.pid}\n")
        auth = MosquittoAuth(tmp_path / "auth", SignalReload(pid_file=pid_file))
        auth.add_device("bike-01", "gym-a")
        out, _ = child.communicate(timeout=10)
        assert out.strip() == "hup"
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    with pytest.raises(ReloadError, match=f"pid {child.pid}"):
        SignalReload(child.pid).reload(Accounts())  # the process is gone
    with pytest.raises(ReloadError, match="cannot read a pid"):
        SignalReload(pid_file=tmp_path / "missing.pid").reload(Accounts())


def test_generation_reload_counts_and_waits_for_the_watcher(tmp_path: Path) -> None:
    ticks = iter(range(1000))
    reloader = GenerationReload(tmp_path, poll_s=0.0, clock=lambda: float(next(ticks)))
    auth = MosquittoAuth(tmp_path, reloader)
    auth.add_device("bike-01", "gym-a")
    auth.revoke("bike-01")
    assert (tmp_path / "generation").read_text() == "2\n"
    assert not reloader.wait_applied(2, timeout_s=5)  # nobody applied it (the clock ran out, no sleeping)
    (tmp_path / "applied").write_text("2\n")
    assert reloader.wait_applied(2, timeout_s=5)


def test_os_level_permissions_of_a_new_state_dir(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        auth = MosquittoAuth(tmp_path / "fresh")
        auth.apply()
    finally:
        os.umask(old)
    assert _mode(auth.state_dir) == 0o700
    assert _mode(auth.passwd_path) == 0o600
