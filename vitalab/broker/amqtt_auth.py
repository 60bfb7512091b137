"""The same accounts and rules on the embedded broker of ``vitalab up`` (amqtt, MQTT 3.1.1).

amqtt's own plugins do not fit: its ``FileAuthPlugin`` reads argon2/sha512-crypt hashes (not Mosquitto's
``$7$``) once at start, and ``TopicAccessControlListPlugin`` takes a fixed ACL (in 0.12.1 its dataclass
config has no ``receive-acl``, so deliveries are unchecked). These two plugins check every CONNECT,
PUBLISH, SUBSCRIBE and delivery against :class:`LiveAccounts`, which the account store updates in
place (:meth:`LiveAccounts.reload` is a :class:`~vitalab.broker.reload.Reloader`); connections of revoked
accounts are closed.

- CONNECT: username + password verified against the account's ``$7$`` hash; a will message on a topic
  the account may not publish refuses the connection (amqtt publishes wills unchecked).
- PUBLISH / delivery: :meth:`~vitalab.broker.accounts.Permissions.may_publish` / ``may_read`` per
  message (a denied PUBLISH is dropped; MQTT 3.1.1 has no reason code for it).
- SUBSCRIBE: only filters whose every topic is readable (amqtt sends retained messages on SUBSCRIBE
  without the delivery check, so a wider filter is refused with 0x80 rather than filtered).

Wiring (see :func:`broker_config`)::

    live = LiveAccounts(auth.apply())            # auth: MosquittoAuth(data_dir / "broker")
    auth.reloader = live
    broker = Broker(broker_config(live, host, port))
    await broker.start()
    stop = live.disconnect_revoked_on(broker, asyncio.get_running_loop())
    ...
    stop(); await broker.shutdown()

:func:`vitalab.embedded.embedded_broker_with_accounts` does exactly this.

Known amqtt 0.12.1 weakness the plugins cannot close: a CONNECT with ``clean_session`` and an existing
client id deletes that session's subscriptions *before* authentication, so an unauthenticated client that
knows a client id can unsubscribe it (observed: the login is refused, the victim receives nothing
afterwards). The embedded broker listens on loopback only; give its clients unguessable client ids, and
use Mosquitto (deploy/) for anything reachable from other machines.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from amqtt.contexts import Action
from amqtt.plugins.base import BaseAuthPlugin, BaseTopicPlugin

from vitalab.broker.accounts import Accounts, permissions
from vitalab.broker.credentials import verify_password
from vitalab.broker.errors import PasswordHashError

logger = logging.getLogger(__name__)


class LiveAccounts:
    """The accounts the embedded broker checks, swapped atomically on :meth:`reload`."""

    def __init__(self, accounts: Accounts | None = None) -> None:
        self._accounts = accounts if accounts is not None else Accounts()
        self._lock = threading.Lock()
        self._listeners: list[Callable[[frozenset[str]], None]] = []

    def current(self) -> Accounts:
        return self._accounts

    def reload(self, accounts: Accounts) -> None:
        """Take the new accounts; tell listeners which usernames lost their login (removed, or a new
        password) so that their connections can be closed."""
        with self._lock:
            old, self._accounts = self._accounts, accounts
            listeners = list(self._listeners)
        gone = frozenset(
            a.username
            for a in old
            if (new := accounts.get(a.username)) is None or new.password_hash != a.password_hash
        )
        if gone:
            for listener in listeners:
                listener(gone)

    def on_revoked(self, listener: Callable[[frozenset[str]], None]) -> Callable[[], None]:
        """Call ``listener`` with the usernames that lost their login at each reload; returns the
        function that removes it again."""
        with self._lock:
            self._listeners.append(listener)

        def remove() -> None:
            with self._lock:
                if listener in self._listeners:
                    self._listeners.remove(listener)

        return remove

    def disconnect_revoked_on(self, broker: Any, loop: asyncio.AbstractEventLoop) -> Callable[[], None]:
        """Close the connections of revoked accounts on ``broker`` (an ``amqtt.broker.Broker`` running on
        ``loop``); :meth:`reload` may be called from any thread. Returns the function that stops it (call
        it when the broker shuts down)."""
        tasks: set[concurrent.futures.Future[int]] = set()

        def listener(usernames: frozenset[str]) -> None:
            if loop.is_closed():
                return
            future = asyncio.run_coroutine_threadsafe(disconnect_users(broker, usernames), loop)
            tasks.add(future)
            future.add_done_callback(tasks.discard)

        return self.on_revoked(listener)


async def disconnect_users(broker: Any, usernames: frozenset[str]) -> int:
    """Close every connected session of ``usernames`` (as amqtt does on a session take-over)."""
    closed = 0
    for session, handler in list(broker.sessions.values()):
        if session.username in usernames and session.transitions.is_connected():
            await handler.handle_connection_closed()
            closed += 1
    if closed:
        logger.info("closed %d connection(s) of revoked broker accounts", closed)
    return closed


def _config(context_config: Any) -> LiveAccounts:
    accounts = getattr(context_config, "accounts", None)
    if not isinstance(accounts, LiveAccounts):
        raise TypeError("the plugin needs {'accounts': LiveAccounts} as its configuration")
    return accounts


class AccountAuthPlugin(BaseAuthPlugin):  # type: ignore[misc]
    """CONNECT: a known username, the right password, and a will only on a topic it may publish."""

    @dataclass
    class Config:
        accounts: LiveAccounts

    async def authenticate(self, *, session: Any) -> bool:
        username, password = session.username, session.password
        if not username or password is None:
            return False
        account = _config(self.context.config).current().get(username)
        if account is None:
            logger.info("broker login refused: unknown user %r", username)
            return False
        if isinstance(password, bytes):
            password = password.decode("utf-8", "replace")
        try:
            matches = verify_password(password, account.password_hash)
        except PasswordHashError:
            logger.exception("stored hash of %r is unusable", username)
            return False
        if not matches:
            logger.info("broker login refused: wrong password for %r", username)
            return False
        if session.will_flag and not permissions(account).may_publish(session.will_topic or ""):
            logger.info(
                "broker login refused: %r may not publish its will on %r", username, session.will_topic
            )
            return False
        return True


class AccountTopicPlugin(BaseTopicPlugin):  # type: ignore[misc]
    """PUBLISH, SUBSCRIBE and each delivery checked against the account's permissions."""

    @dataclass
    class Config:
        accounts: LiveAccounts

    async def topic_filtering(
        self, *, session: Any = None, topic: str | None = None, action: Action | None = None
    ) -> bool:
        if session is None or not session.username or not topic:
            return False
        granted = _config(self.context.config).current().permissions(session.username)
        if granted is None:
            return False
        if action == Action.PUBLISH:
            return granted.may_publish(topic)
        if action == Action.SUBSCRIBE:
            return granted.may_subscribe(topic)
        if action == Action.RECEIVE:
            return granted.may_read(topic)
        return False


def broker_config(
    accounts: LiveAccounts, host: str, port: int, *, max_connections: int = 1000
) -> dict[str, Any]:
    """An amqtt ``Broker`` configuration: one TCP listener, these two plugins and nothing else (no
    anonymous access, no ``$SYS`` tree)."""
    return {
        "listeners": {
            "default": {"type": "tcp", "bind": f"{host}:{port}", "max_connections": max_connections}
        },
        "plugins": {
            f"{__name__}.AccountAuthPlugin": {"accounts": accounts},
            f"{__name__}.AccountTopicPlugin": {"accounts": accounts},
        },
    }
