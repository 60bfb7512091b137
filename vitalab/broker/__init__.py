"""Broker credentials: per-device MQTT logins, least-privilege service accounts, Mosquitto's password
and ACL files, and the same rules on the embedded broker (:mod:`vitalab.broker.amqtt_auth`, imported
separately because it needs amqtt)."""

from vitalab.broker.accounts import (
    Account,
    Accounts,
    DeviceAccount,
    GatewayAccount,
    IngesterAccount,
    LiveViewAccount,
    MonitorAccount,
    Permissions,
    Role,
    SimulatorAccount,
    filter_covers,
    permissions,
)
from vitalab.broker.acl import render_acl, render_passwd
from vitalab.broker.credentials import hash_password, new_secret, verify_password
from vitalab.broker.errors import (
    AccountExists,
    BrokerAuthError,
    InvalidAccount,
    PasswordHashError,
    ReloadError,
    StateFileError,
    UnknownAccount,
)
from vitalab.broker.reload import GenerationReload, NoReload, Reloader, SignalReload
from vitalab.broker.store import IssuedCredential, MosquittoAuth

__all__ = [
    "Account",
    "AccountExists",
    "Accounts",
    "BrokerAuthError",
    "DeviceAccount",
    "GatewayAccount",
    "GenerationReload",
    "IngesterAccount",
    "InvalidAccount",
    "IssuedCredential",
    "LiveViewAccount",
    "MonitorAccount",
    "MosquittoAuth",
    "NoReload",
    "PasswordHashError",
    "Permissions",
    "ReloadError",
    "Reloader",
    "Role",
    "SignalReload",
    "SimulatorAccount",
    "StateFileError",
    "UnknownAccount",
    "filter_covers",
    "hash_password",
    "new_secret",
    "permissions",
    "render_acl",
    "render_passwd",
    "verify_password",
]
