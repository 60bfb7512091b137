"""``python -m vitalab.broker``: manage broker accounts from a shell (and the compose ``broker-init`` job).

Every command works on an account store directory (``--state-dir``, or ``VITALAB_BROKER_STATE_DIR``) and
tells the broker to reload: by SIGHUP to the pid in ``--pid-file``, or (default) by bumping the
store's generation counter, which ``deploy/mosquitto/run.sh`` next to the broker turns into a SIGHUP.
Passwords are printed once, on stdout, and never stored.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated

import typer

from vitalab.broker.accounts import permissions, role_of
from vitalab.broker.errors import BrokerAuthError
from vitalab.broker.init import ServiceSpec, chown_tree, init_services
from vitalab.broker.reload import GenerationReload, Reloader, SignalReload
from vitalab.broker.store import IssuedCredential, MosquittoAuth
from vitalab.broker.tls import ensure_self_signed

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Broker accounts (Mosquitto files).")

StateDir = Annotated[
    Path, typer.Option("--state-dir", envvar="VITALAB_BROKER_STATE_DIR", help="the account store directory")
]
WaitS = Annotated[
    float, typer.Option("--wait-s", help="wait this long for the broker to confirm the reload (generation)")
]
PidFile = Annotated[
    Path | None,
    typer.Option("--pid-file", help="SIGHUP this broker instead of bumping the generation counter"),
]


def _auth(state_dir: Path, pid_file: Path | None, wait_s: float) -> MosquittoAuth:
    reloader: Reloader = (
        SignalReload(pid_file=pid_file) if pid_file else GenerationReload(state_dir, wait_s=wait_s)
    )
    return MosquittoAuth(state_dir, reloader)


def _fail(exc: BrokerAuthError) -> typer.Exit:
    typer.echo(f"error: {exc}", err=True)
    return typer.Exit(1)


def _show(credential: IssuedCredential) -> None:
    typer.echo(json.dumps({"username": credential.username, "role": credential.role.value,
                           "password": credential.password}))  # fmt: skip


@app.command()
def init(
    state_dir: StateDir,
    clients_dir: Annotated[Path, typer.Option(help="where the services' client files go")],
    host: Annotated[str, typer.Option(help="broker host name in the client URLs")] = "mosquitto",
    port: Annotated[int, typer.Option(help="broker port in the client URLs")] = 1883,
    service: Annotated[
        list[str] | None, typer.Option(help="username=role[@site,...], repeatable (ingester, live-view, ...)")
    ] = None,
    tls_dir: Annotated[
        Path | None, typer.Option(help="create a self-signed certificate here if absent")
    ] = None,
    tls_name: Annotated[
        list[str] | None, typer.Option(help="host names/addresses of the certificate")
    ] = None,
    rotate: Annotated[
        list[str] | None,
        typer.Option(envvar="VITALAB_BROKER_ROTATE", help="give these service accounts new passwords"),
    ] = None,
    owner: Annotated[str | None, typer.Option(help="uid:gid that should own the state, clients, tls")] = None,
    own: Annotated[list[Path] | None, typer.Option(help="further directories to give to --owner")] = None,
) -> None:
    """Create missing service accounts and their client files; a TLS certificate if none; render files."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        specs = [ServiceSpec.parse(s) for s in service or []]
        # the broker is not running yet (the job runs before it); a running one reloads at the next bump
        auth = _auth(state_dir, None, wait_s=0.0)
        issued = init_services(auth, clients_dir, specs, host=host, port=port, rotate=rotate or [])
        created = ensure_self_signed(tls_dir, tls_name or [host]) if tls_dir else False
    except BrokerAuthError as exc:
        raise _fail(exc) from None
    if owner:
        uid_s, _, gid_s = owner.partition(":")
        paths = [state_dir, clients_dir, *([tls_dir] if tls_dir else []), *(own or [])]
        chown_tree(paths, int(uid_s), int(gid_s or uid_s))
    typer.echo(json.dumps({"issued": issued, "certificate_created": created}))


@app.command("list")
def list_accounts(state_dir: StateDir) -> None:
    """Every account with its role and what it may publish and read (no hashes)."""
    try:
        accounts = MosquittoAuth(state_dir).accounts()
    except BrokerAuthError as exc:
        raise _fail(exc) from None
    for account in accounts:
        granted = permissions(account)
        typer.echo(json.dumps({"username": account.username, "role": role_of(account).value,
                               "publish": granted.publish, "read": granted.read}))  # fmt: skip


@app.command("add-device")
def add_device(
    device_id: str,
    site: Annotated[str, typer.Option()],
    state_dir: StateDir,
    pid_file: PidFile = None,
    wait_s: WaitS = 5.0,
) -> None:
    """A device's own login (username = device id), bound to one site. Prints the password once."""
    try:
        _show(_auth(state_dir, pid_file, wait_s).add_device(device_id, site))
    except BrokerAuthError as exc:
        raise _fail(exc) from None


@app.command("add-gateway")
def add_gateway(
    gateway_id: str,
    site: Annotated[str, typer.Option()],
    state_dir: StateDir,
    device: Annotated[list[str] | None, typer.Option(help="attached device id, repeatable")] = None,
    pid_file: PidFile = None,
    wait_s: WaitS = 5.0,
) -> None:
    """A gateway's login, allowed to publish for its attached devices. Prints the password once."""
    try:
        _show(_auth(state_dir, pid_file, wait_s).add_gateway(gateway_id, site, device or []))
    except BrokerAuthError as exc:
        raise _fail(exc) from None


@app.command()
def attach(
    gateway_id: str, device: list[str], state_dir: StateDir, pid_file: PidFile = None, wait_s: WaitS = 5.0
) -> None:
    """Let a gateway publish for more devices (which then belong to its site)."""
    try:
        _auth(state_dir, pid_file, wait_s).attach(gateway_id, device)
    except BrokerAuthError as exc:
        raise _fail(exc) from None


@app.command()
def detach(
    gateway_id: str, device: list[str], state_dir: StateDir, pid_file: PidFile = None, wait_s: WaitS = 5.0
) -> None:
    """The gateway may no longer publish for these devices."""
    try:
        _auth(state_dir, pid_file, wait_s).detach(gateway_id, device)
    except BrokerAuthError as exc:
        raise _fail(exc) from None


@app.command()
def rotate(username: str, state_dir: StateDir, pid_file: PidFile = None, wait_s: WaitS = 5.0) -> None:
    """A new password for an account (the old one stops working at the reload). Prints it once."""
    try:
        _show(_auth(state_dir, pid_file, wait_s).rotate(username))
    except BrokerAuthError as exc:
        raise _fail(exc) from None


@app.command()
def revoke(username: str, state_dir: StateDir, pid_file: PidFile = None, wait_s: WaitS = 5.0) -> None:
    """Remove an account: the broker refuses it and closes its connections at the reload."""
    try:
        _auth(state_dir, pid_file, wait_s).revoke(username)
    except BrokerAuthError as exc:
        raise _fail(exc) from None
