"""One settings object, built at start-up from the environment (prefix ``VITALAB_``).

Nothing here connects to anything or reads the environment at import time: call :func:`load_settings`
in the entry point and hand the object down.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import unquote, urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AwareDatetime, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from vitalab.errors import ConfigError

DEFAULT_MQTT_PORT = 1883
DEFAULT_MQTTS_PORT = 8883


@dataclass(frozen=True, slots=True)
class MqttTarget:
    """A broker address parsed from ``mqtt://user:pass@host:port`` or ``mqtts://...`` (TLS)."""

    host: str
    port: int
    tls: bool = False
    username: str | None = None
    password: str | None = None

    @classmethod
    def parse(cls, url: str) -> MqttTarget:
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts", "tcp", "ssl"):
            raise ConfigError("mqtt_url", f"scheme must be mqtt:// or mqtts://, got {parts.scheme!r}")
        if not parts.hostname:
            raise ConfigError("mqtt_url", "no host in URL")
        tls = parts.scheme in ("mqtts", "ssl")
        try:
            port = parts.port or (DEFAULT_MQTTS_PORT if tls else DEFAULT_MQTT_PORT)
        except ValueError as exc:
            raise ConfigError("mqtt_url", str(exc)) from exc
        return cls(
            host=parts.hostname,
            port=port,
            tls=tls,
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
        )

    def ssl_context(self, ca_file: Path | None = None) -> ssl.SSLContext | None:
        if not self.tls:
            return None
        return ssl.create_default_context(cafile=str(ca_file) if ca_file else None)

    def url(self) -> str:
        """The URL without the password, for logs and banners."""
        user = f"{self.username}@" if self.username else ""
        return f"{'mqtts' if self.tls else 'mqtt'}://{user}{self.host}:{self.port}"


class Settings(BaseSettings):
    """Every knob vitalab has. Environment variables are ``VITALAB_<FIELD>`` (case-insensitive)."""

    model_config = SettingsConfigDict(env_prefix="VITALAB_", env_file=None, extra="ignore", frozen=True)

    # --- where things are -------------------------------------------------------------------------
    database_url: str | None = Field(
        default=None, description="PostgreSQL/TimescaleDB URL; unset: embedded PostgreSQL in data_dir"
    )
    mqtt_url: str | None = Field(default=None, description="Broker URL; unset: in-process broker")
    mqtt_ca_file: Path | None = Field(default=None, description="CA bundle for mqtts:// brokers")
    timescale: Literal["auto", "require", "off"] = Field(
        default="auto", description="use TimescaleDB when the server has it (auto), insist, or never"
    )
    compress_after_days: int | None = Field(default=7, ge=1, description="TimescaleDB columnstore age")
    retention_days: int | None = Field(
        default=None,
        ge=8,  # must outlive the 7-day refresh window of the hourly aggregate, or refreshes would erase it
        description="drop raw samples older than this (TimescaleDB); unset keeps them forever",
    )
    dead_letter_retention_days: int | None = Field(default=90, ge=1)
    site: str = Field(default="demo", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    site_timezone: str = Field(
        default="UTC",
        description="IANA timezone of the site: the simulated gym's opening hours; `vitalab up` stores it in "
        "sites.timezone (local days of the analytics)",
    )
    data_dir: Path = Field(default=Path.home() / ".local" / "share" / "vitalab")

    # --- embedded services --------------------------------------------------------------------------
    embedded_mqtt_port: int = Field(default=1883, ge=0, le=65535, description="0 picks a free port")

    # --- API -----------------------------------------------------------------------------------------
    api_host: str = "127.0.0.1"
    api_port: int = Field(default=8000, ge=0, le=65535)
    device_offline_after_s: float = Field(
        default=300.0,
        gt=0,
        description="the API shows a device offline once nothing (sample or state) came from it for this "
        "many seconds",
    )

    api_db_timeout_s: float = Field(
        default=2.0, gt=0, le=60, description="a request waits this long for a database connection, then 503"
    )
    api_workers: int = Field(
        default=1, ge=1, le=64, description="API processes (`vitalab api`); each has its own pools and caches"
    )
    api_key_cache_s: float = Field(
        default=10.0,
        ge=0,
        le=300,
        description="a verified API key is not read again for this long (0: every request reads it); a key "
        "revoked on another API process is accepted there at most this long",
    )

    # --- the live floor (GET /v1/sites/{site}/live; api/live/) -----------------------------------------
    # The API follows the broker with the account of VITALAB_MQTT_URL (in the compose stack the read-only
    # live-view account `api`); one connection per watched site, a clean session that keeps nothing.
    live_silent_after_s: float = Field(
        default=60.0, gt=0, description="a device in use that sends nothing this long is shown silent"
    )
    live_idle_silent_after_s: float | None = Field(
        default=None,
        gt=0,
        description="a free device that sends nothing this long is shown silent; unset: never (most "
        "equipment speaks only while used)",
    )
    live_client_queue: int = Field(
        default=256,
        ge=1,
        description="events waiting for one live client; a client further behind is dropped",
    )
    live_replay_events: int = Field(
        default=2000, ge=1, description="recent events per site a client resuming with Last-Event-ID gets"
    )
    live_send_timeout_s: float = Field(
        default=10.0, gt=0, description="a live client that takes no data for this long is dropped"
    )
    live_ping_s: float = Field(default=15.0, gt=0, description="keep-alive comment interval of the stream")
    live_tick_s: float = Field(default=1.0, gt=0, description="how often silence is judged")
    live_profile_refresh_s: float = Field(
        default=30.0,
        gt=0,
        description="how often a live hub re-reads the check-ins behind the heart-rate zones and the site's "
        "opening hours and timezone (a change reaches a watched floor within this time)",
    )

    # --- access (api/security.py, api/policy.py) -----------------------------------------------------
    oidc_issuer: str | None = Field(
        default=None, description="accept bearer JWTs from this OpenID Connect issuer (single sign-on)"
    )
    oidc_audience: str | None = Field(default=None, description="the `aud` the tokens must carry")
    oidc_jwks_url: str | None = Field(
        default=None, description="the issuer's key set; unset: from its /.well-known/openid-configuration"
    )
    oidc_role_claim: str = Field(default="vitalab_role", description="claim holding the role")
    oidc_scope_claim: str = Field(
        default="vitalab_scope", description="claim holding the scope: `*`, `site:<id>`, `study:<id>` entries"
    )
    auth_failures_max: int = Field(
        default=10, ge=1, description="failed authentications per address within the window before 429"
    )
    auth_failures_window_s: float = Field(default=60.0, gt=0)
    broker_state_dir: Path | None = Field(
        default=None,
        description="the broker's account store (vitalab.broker) in which the API issues and revokes device "
        "and gateway logins; unset: `vitalab up` keeps it in data_dir/broker for its in-process broker, "
        "other deployments manage broker credentials outside vitalab",
    )

    # --- wire validation -----------------------------------------------------------------------------
    max_payload_bytes: int = Field(default=256 * 1024, ge=256)
    max_future_s: float = Field(default=300.0, ge=0, description="accept device clocks this far ahead")
    max_past_s: float = Field(default=400 * 86400.0, ge=0, description="reject samples older than this")

    # --- ingest --------------------------------------------------------------------------------------
    mqtt_protocol: Literal["5", "3.1.1"] = "5"
    ingest_client_id: str = "vitalab-ingest"
    ingest_share_group: str | None = Field(
        default="ingest", description="MQTT 5 shared-subscription group; empty for a plain subscription"
    )
    ingest_batch_rows: int = Field(default=5000, ge=1)
    ingest_batch_age_ms: int = Field(default=200, ge=1)
    ingest_writers: int = Field(
        default=2,
        ge=1,
        le=16,
        description="database connections writing batches at once (commits acknowledged in order)",
    )
    ingest_unknown_devices: Literal["register", "quarantine"] = "register"
    ingest_receive_maximum: int = Field(
        default=5000, ge=1, le=65535, description="un-acked messages in flight (MQTT 5 receive maximum)"
    )
    ingest_max_inflight_bytes: int = Field(
        default=64 * 1024 * 1024,
        ge=1,
        description="payload bytes received and not yet committed; intake pauses at this bound",
    )
    ingest_drain_timeout_s: float = Field(
        default=30.0,
        ge=0,
        description="with a share group: on SIGTERM, drain and end the session within this time; 0: keep it",
    )
    ingest_metrics_port: int | None = Field(default=None, ge=0, le=65535, description="Prometheus /metrics")
    ingest_commit_acks: bool = Field(
        default=True,
        description="after each commit, publish what was stored per sender on its ack topic "
        "(vitalab.wire.acks)",
    )
    ingest_session_expiry_s: int = Field(
        default=600,
        ge=0,
        le=0xFFFFFFFF,
        description="MQTT 5: a dead ingester's session, and the telemetry queued into it, are dropped this "
        "long after it went away (senders resend what was never acknowledged; see README, Delivery)",
    )
    dead_letter_max_bytes: int = Field(default=16 * 1024, ge=0)

    # --- the bus the ingester reads (ingest/source.py: mqtt or nats) ------------------------------------
    bus: Literal["mqtt", "nats"] = Field(
        default="mqtt",
        description="mqtt: the ingester subscribes to VITALAB_MQTT_URL; nats: it pulls from a NATS JetStream "
        "cluster (VITALAB_NATS_URLS) whose MQTT listener the devices and gateways speak to",
    )
    nats_urls: str = Field(
        default="nats://127.0.0.1:4222",
        description="comma-separated NATS servers of the cluster (nats://user:password@host:port); the "
        "ingester fails over between them",
    )
    nats_consumer: str = Field(
        default="vitalab-ingest",
        pattern=r"^[A-Za-z0-9_-]{1,64}$",
        description="the durable pull consumer every ingester shares (each message goes to one of them)",
    )
    nats_ack_wait_s: float = Field(
        default=30.0,
        gt=0,
        description="a message delivered and not acknowledged this long goes to an ingester again",
    )
    nats_max_ack_pending: int = Field(
        default=20000, ge=1, description="un-acked messages out to all ingesters together"
    )
    nats_replicas: int = Field(
        default=3,
        ge=1,
        le=5,
        description="replicas of the MQTT listener's message stream, when the ingester creates it (keep it "
        "equal to stream_replicas in nats.conf)",
    )
    nats_startup_timeout_s: float = Field(
        default=60.0,
        gt=0,
        description="how long an ingester waits at start for JetStream (leaders for its stream and consumer)",
    )

    # --- analytics ------------------------------------------------------------------------------------
    analytics_interval_s: float | None = Field(
        default=None,
        ge=0,
        description="seconds between incremental analytics runs; unset: every 60 s in `vitalab up`, "
        "never in `vitalab ingest`; 0: never",
    )
    analytics_k_anonymity: int = Field(
        default=5, ge=2, description="site aggregates of fewer participants are suppressed (API minimum)"
    )

    # --- research exports (api/exports) ----------------------------------------------------------------
    export_dir: Path | None = Field(default=None, description="export files; unset: data_dir/exports")
    export_worker: bool = Field(
        default=True, description="run the export worker inside the API process (`vitalab export worker` too)"
    )
    export_lease_s: float = Field(
        default=120.0, gt=0, description="an export job whose worker is silent this long is taken over"
    )
    export_max_attempts: int = Field(default=3, ge=1, description="attempts of an export job before it fails")

    # --- simulator (used by `vitalab up` and `vitalab simulate`) --------------------------------------
    sim_devices: int = Field(default=8, ge=0)
    sim_seed: int = 7
    sim_raw_share: float = Field(
        default=0.5, ge=0, le=1, description="share of the simulated gym sending raw frames via a gateway"
    )
    sim_mode: Literal["gym", "fleet"] = Field(
        default="gym",
        description="`vitalab up`: a gym day (members come and go, straps, kiosk check-ins), or a fleet "
        "whose devices are always busy",
    )
    sim_members: int = Field(default=60, ge=1, description="gym members (the same every day)")
    sim_strap_share: float = Field(
        default=0.6, ge=0, le=1, description="share of members with their own strap"
    )
    sim_check_in_share: float = Field(default=0.7, ge=0, le=1, description="share of visits checked in")
    sim_open_hours: str | None = Field(
        default=None,
        pattern=r"^\d{1,2}-\d{1,2}$",
        description="opening hours, local, e.g. 6-22; unset: 0-24 in `vitalab up` (a demo shows data "
        "whenever started), 6-22 in `vitalab simulate`",
    )
    sim_visit_minutes: str | None = Field(
        default=None,
        pattern=r"^\d{1,3}-\d{1,3}$",
        description="shortest-longest visit in minutes; unset: 4-10 in `vitalab up`, 20-60 in "
        "`vitalab simulate`",
    )
    sim_backfill_days: float = Field(
        default=2.0, ge=0, le=60, description="`vitalab up`: days of gym history published in the background"
    )
    sim_start: AwareDatetime | None = Field(
        default=None,
        description="the simulated gym's clock when the simulator starts (ISO 8601 with its offset), then "
        "running in real time; unset: now. Pins the gym's plan to a chosen moment (tests, demos)",
    )

    # --- gateway (`vitalab gateway`; `vitalab up` runs one in-process for the raw-frame simulators) -------
    gateway_id: str = Field(default="gw-1", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    gateway_transports: str = Field(
        default="mqtt",
        pattern=r"^(mqtt|ble|ant)(,(mqtt|ble|ant))*$",
        description="mqtt (raw topics), ble, ant",
    )
    gateway_devices_file: Path | None = Field(default=None, description="TOML device list (ids, radios)")
    gateway_buffer_path: Path | None = Field(
        default=None, description="store-and-forward SQLite file; unset: data_dir/gateway/<gateway_id>.sqlite"
    )
    gateway_buffer_max_entries: int = Field(default=1_000_000, ge=1)
    gateway_buffer_max_bytes: int | None = Field(default=None, ge=1)
    gateway_batch_samples: int = Field(default=10, ge=1, le=3600)
    gateway_commit_acks: bool = Field(
        default=True,
        description="keep telemetry until an ingester acknowledges its commit (ingesters must publish "
        "acks: VITALAB_INGEST_COMMIT_ACKS); false: the broker's PUBACK deletes it",
    )
    gateway_ack_timeout_s: float = Field(
        default=30.0,
        gt=0,
        description="resend telemetry whose commit ack has not come this long after its PUBACK",
    )

    @field_validator("ingest_share_group", mode="after")
    @classmethod
    def _empty_is_none(cls, v: str | None) -> str | None:
        return v or None

    @field_validator("site_timezone", mode="after")
    @classmethod
    def _known_timezone(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown timezone {v!r} (an IANA name such as Europe/Brussels)") from None
        return v

    def exports_root(self) -> Path:
        return self.export_dir or self.data_dir / "exports"

    def gateway_buffer(self) -> Path:
        return self.gateway_buffer_path or self.data_dir / "gateway" / f"{self.gateway_id}.sqlite"

    def nats_servers(self) -> list[str]:
        return [u.strip() for u in self.nats_urls.split(",") if u.strip()]

    def mqtt_target(self) -> MqttTarget | None:
        return MqttTarget.parse(self.mqtt_url) if self.mqtt_url else None


def load_settings(**overrides: object) -> Settings:
    """Build the settings from the environment; keyword overrides win (used by the CLI and tests)."""
    return Settings(**overrides)  # type: ignore[arg-type]
