"""Structural facts about docker-compose.yml, Dockerfile and .dockerignore that no Docker engine checks here.

The MQTT credentials and the mosquitto/simulator health checks are exercised against a real broker in
test_mosquitto_config.py.
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yml"

VITALAB_SERVICES = {
    "migrate",
    "broker-init",
    "ingest-1",
    "ingest-2",
    "api",
    "simulator",
    "ingest-nats-1",
    "ingest-nats-2",
}
GRAFANA_SERVICES = {"grafana-init", "grafana"}
NATS_NODES = {"nats-1", "nats-2", "nats-3"}
CLUSTER_SERVICES = NATS_NODES | {"nats-init", "ingest-nats-1", "ingest-nats-2"}
ONE_SHOT = {"migrate", "broker-init", "grafana-init", "nats-init"}
HEALTH_CONDITIONS = {"service_healthy", "service_completed_successfully"}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    with COMPOSE_FILE.open() as fh:
        data: dict[str, Any] = yaml.safe_load(fh)
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    result: dict[str, dict[str, Any]] = compose["services"]
    return result


def _env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    assert isinstance(env, dict), "use the mapping form of `environment` (it merges with the anchor)"
    return env


def _depends_on(service: dict[str, Any]) -> dict[str, Any]:
    deps = service.get("depends_on") or {}
    assert isinstance(deps, dict), "use the long form of depends_on, with a condition"
    return deps


def test_compose_spec_shape(compose: dict[str, Any], services: dict[str, dict[str, Any]]) -> None:
    assert "version" not in compose, "the Compose spec has no `version:` key"
    assert set(services) == {
        "timescaledb",
        "mosquitto",
    } | VITALAB_SERVICES | GRAFANA_SERVICES | NATS_NODES | {"nats-init"}
    declared = set(compose.get("volumes") or {})
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if not source.startswith((".", "/")):
                assert source in declared, f"{name}: named volume {source} is not declared"


def _strings(node: object) -> list[str]:
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        return [s for key, value in node.items() for s in _strings(key) + _strings(value)]
    if isinstance(node, list):
        return [s for item in node for s in _strings(item)]
    return []


def test_dollar_signs_are_escaped(compose: dict[str, Any]) -> None:
    """Compose interpolates `$X`/`${X}` in values; a literal `$` (e.g. `$SYS`) must be written `$$`."""
    interpolation = re.compile(r"\$\$|\$\{[A-Za-z_][A-Za-z0-9_]*(:?[-?+][^}]*)?\}")
    for value in _strings(compose):
        assert "$" not in interpolation.sub("", value), f"unescaped `$` (write `$$`): {value!r}"


def test_shared_env_anchor(services: dict[str, dict[str, Any]]) -> None:
    assert re.search(r"^x-vitalab-env: &vitalab-env$", COMPOSE_FILE.read_text(), re.MULTILINE)
    for name in VITALAB_SERVICES:
        env = _env(services[name])
        assert env["VITALAB_TIMESCALE"] == "require", name
        assert env["VITALAB_SITE"] == "demo", name
        assert urlsplit(env["VITALAB_DATABASE_URL"]).hostname == "timescaledb", name
        assert all(isinstance(value, str) for value in env.values()), f"{name}: quote env values"


def test_vitalab_services_share_one_image(services: dict[str, dict[str, Any]]) -> None:
    images = {services[name].get("image") for name in VITALAB_SERVICES}
    assert len(images) == 1
    assert None not in images
    for name in VITALAB_SERVICES:
        assert services[name]["build"] == ".", name


def test_commands(services: dict[str, dict[str, Any]]) -> None:
    assert services["migrate"]["command"] == ["db", "migrate"]
    assert services["ingest-1"]["command"] == ["ingest"]
    assert services["ingest-2"]["command"] == ["ingest"]
    assert services["api"]["command"] == ["api"]
    assert services["simulator"]["command"] == ["simulate"]


def test_ingesters_share_one_subscription(services: dict[str, dict[str, Any]]) -> None:
    one, two = _env(services["ingest-1"]), _env(services["ingest-2"])
    assert one["VITALAB_INGEST_SHARE_GROUP"] == two["VITALAB_INGEST_SHARE_GROUP"] == "ingest"
    assert one["VITALAB_INGEST_CLIENT_ID"] != two["VITALAB_INGEST_CLIENT_ID"]
    # one broker account (its client file written by broker-init, see test_mosquitto_config.py)
    assert one["VITALAB_MQTT_URL_FILE"] == two["VITALAB_MQTT_URL_FILE"] == "/run/vitalab/mqtt/ingest.url"
    assert one["VITALAB_MQTT_PROTOCOL"] == two["VITALAB_MQTT_PROTOCOL"] == "5"  # shared subs are MQTT 5
    for env in (one, two):
        port = env["VITALAB_INGEST_METRICS_PORT"]
        assert port == "9100"
    for name in ("ingest-1", "ingest-2"):
        assert services[name]["restart"] == "unless-stopped"
        assert "http://127.0.0.1:9100/metrics" in services[name]["healthcheck"]["test"][-1]
        deps = _depends_on(services[name])
        assert deps["migrate"]["condition"] == "service_completed_successfully"
        assert deps["mosquitto"]["condition"] == "service_healthy"


def test_dependencies_wait_for_health_or_completion(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        for dependency, spec in _depends_on(service).items():
            assert dependency in services, f"{name} depends on unknown {dependency}"
            condition = spec.get("condition")
            assert condition in HEALTH_CONDITIONS, f"{name} -> {dependency}: condition {condition!r}"
            if condition == "service_healthy":
                assert "healthcheck" in services[dependency], f"{dependency} has no healthcheck"
            else:
                assert dependency in ONE_SHOT, f"{dependency} never completes"
    assert _depends_on(services["migrate"]) == {"timescaledb": {"condition": "service_healthy"}}


def test_long_running_services_have_healthchecks(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        if name in ONE_SHOT:
            assert service.get("restart", "no") == "no", f"{name} is one-shot and must not restart"
            continue
        assert service.get("restart") == "unless-stopped", name
        check = service.get("healthcheck")
        assert check, f"{name} has no healthcheck"
        assert not check.get("disable", False), name
        assert check["test"][0] in ("CMD", "CMD-SHELL"), name
        if check["test"][:3] == ["CMD", "python", "-c"]:
            compile(check["test"][3], f"{name}-healthcheck", "exec")


def test_api(services: dict[str, dict[str, Any]]) -> None:
    api = services["api"]
    env = _env(api)
    assert env["VITALAB_API_HOST"] == "0.0.0.0"
    assert env["VITALAB_API_PORT"] == "8000"
    assert "8000:8000" in api["ports"]
    assert "http://127.0.0.1:8000/health" in api["healthcheck"]["test"][-1]
    deps = _depends_on(api)
    assert deps["migrate"]["condition"] == "service_completed_successfully"
    # device registration issues and revokes logins in the broker's account store (read-write), which
    # mosquitto's run.sh watches; broker-init has made it and given it to the API's uid first
    store = env["VITALAB_BROKER_STATE_DIR"]
    mounts = {v.split(":")[1]: v for v in api["volumes"]}
    assert mounts[store] == f"mosquitto-auth:{store}"
    assert "mosquitto-auth:/mosquitto/auth" in services["mosquitto"]["volumes"]
    assert deps["broker-init"]["condition"] == "service_completed_successfully"


def test_timescaledb(services: dict[str, dict[str, Any]]) -> None:
    db = services["timescaledb"]
    image = re.fullmatch(r"timescale/timescaledb:2\.\d+\.\d+-pg(\d+)", db["image"])
    assert image, f"pin a TimescaleDB release and a PostgreSQL major: {db['image']}"
    major = int(image[1])
    # not 15: there TimescaleDB's background jobs all failed (cannot drop portal "" while it is being set up)
    assert major in (17, 18)
    env = _env(db)
    url = urlsplit(_env(services["migrate"])["VITALAB_DATABASE_URL"])
    assert (url.username, url.password, url.path.lstrip("/")) == (
        env["POSTGRES_USER"],
        env["POSTGRES_PASSWORD"],
        env["POSTGRES_DB"],
    )
    assert url.port == 5432
    # 18+ images keep the data in /var/lib/postgresql/<major>/docker and refuse a mount at .../data
    mounts = {v.split(":")[1]: v.split(":")[0] for v in db["volumes"]}
    target = "/var/lib/postgresql" if major >= 18 else "/var/lib/postgresql/data"
    assert set(mounts) == {target}
    # a volume per major version: a new major starts empty instead of finding another major's files
    assert mounts[target] == f"timescaledb-pg{major}"
    assert "pg_isready" in json.dumps(db["healthcheck"]["test"])


def test_mosquitto(services: dict[str, dict[str, Any]]) -> None:
    broker = services["mosquitto"]
    assert broker["image"] == "eclipse-mosquitto:2"
    assert "127.0.0.1:1883:1883" in broker["ports"]  # plain MQTT on the host's loopback only
    assert "8883:8883" in broker["ports"]  # TLS
    mounts = {}
    for volume in broker["volumes"]:
        source, target, *mode = volume.split(":")
        mounts[target] = (source, mode)
    for name in ("mosquitto.conf", "run.sh"):
        source, mode = mounts[f"/mosquitto/config/{name}"]
        assert source == f"./deploy/mosquitto/{name}"
        assert mode == ["ro"]
        assert (REPO / source).is_file()
    for target in ("/mosquitto/data", "/mosquitto/auth", "/mosquitto/tls"):
        source, _ = mounts[target]
        assert not source.startswith((".", "/")), f"{target} belongs in a named volume"
    kind, script = broker["healthcheck"]["test"]
    assert kind == "CMD-SHELL"
    assert script.startswith("mosquitto_sub ")
    assert "-u monitor" in script


def test_simulator_uses_own_credentials(services: dict[str, dict[str, Any]]) -> None:
    env = _env(services["simulator"])
    assert env["VITALAB_MQTT_URL_FILE"] == "/run/vitalab/mqtt/simulator.url"
    assert "--service=simulator=simulator@demo" in services["broker-init"]["command"]  # its site only
    assert int(env["VITALAB_SIM_DEVICES"]) > 0


def test_dockerfile() -> None:
    text = (REPO / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim\b", text, re.MULTILINE)
    assert "pip install --no-cache-dir" in text
    users = re.findall(r"^USER (\S+)", text, re.MULTILINE)
    assert users, "no USER: the image would run as root"
    assert users[-1] not in ("root", "0")
    assert re.search(r'^ENTRYPOINT \["vitalab"\]$', text, re.MULTILINE)


def test_dockerignore_keeps_what_the_wheel_build_needs() -> None:
    patterns = {line.strip() for line in (REPO / ".dockerignore").read_text().splitlines() if line.strip()}
    patterns = {p for p in patterns if not p.startswith("#")}
    assert {".git", "venv", ".venv"} <= patterns
    with (REPO / "pyproject.toml").open("rb") as fh:
        packages = tomllib.load(fh)["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"]
    for needed in ("pyproject.toml", "README.md", *packages):
        assert needed not in patterns, needed
        assert f"/{needed}" not in patterns, needed
    assert not any(p in ("*", "**") for p in patterns)


# --- Grafana (deploy/grafana; its dashboard's queries are run in test_grafana.py) ---------------------------


def _mounts(service: dict[str, Any]) -> dict[str, tuple[str, list[str]]]:
    out = {}
    for volume in service["volumes"]:
        source, target, *mode = volume.split(":")
        out[target] = (source, mode)
    return out


def test_grafana(services: dict[str, dict[str, Any]]) -> None:
    grafana = services["grafana"]
    assert re.fullmatch(r"grafana/grafana:\d+\.\d+\.\d+", grafana["image"]), "pin a Grafana release"
    env = _env(grafana)
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    assert env["GF_USERS_ALLOW_SIGN_UP"] == "false"
    # the admin password comes from a file made at start-up, never from the repository
    assert "GF_SECURITY_ADMIN_PASSWORD" not in env
    secret = PurePosixPath(env["GF_SECURITY_ADMIN_PASSWORD__FILE"])
    mounts = _mounts(grafana)
    secrets_source, secrets_mode = mounts[str(secret.parent)]
    assert secrets_source == "grafana-secrets"
    assert secrets_mode == ["ro"]
    # provisioning and dashboards from the repository, read-only
    for target, source in (
        ("/etc/grafana/provisioning", "./deploy/grafana/provisioning"),
        ("/etc/vitalab/grafana/dashboards", "./deploy/grafana/dashboards"),
    ):
        assert mounts[target] == (source, ["ro"])
        assert (REPO / source).is_dir()
    home = PurePosixPath(env["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"])
    assert str(home.parent) == "/etc/vitalab/grafana/dashboards"
    assert (REPO / "deploy/grafana/dashboards" / home.name).is_file()
    assert mounts["/var/lib/grafana"][0] == "grafana-data"
    assert "/api/health" in grafana["healthcheck"]["test"][-1]
    deps = _depends_on(grafana)
    assert deps["grafana-init"]["condition"] == "service_completed_successfully"
    assert deps["timescaledb"]["condition"] == "service_healthy"


def test_grafana_init(services: dict[str, dict[str, Any]]) -> None:
    init = services["grafana-init"]
    # psql of the database's own image, after the migrations (which make the role vitalab_readonly)
    assert init["image"] == services["timescaledb"]["image"]
    assert _depends_on(init) == {"migrate": {"condition": "service_completed_successfully"}}
    env = _env(init)
    db = _env(services["timescaledb"])
    assert (env["PGHOST"], env["PGUSER"], env["PGPASSWORD"], env["PGDATABASE"]) == (
        "timescaledb",
        db["POSTGRES_USER"],
        db["POSTGRES_PASSWORD"],
        db["POSTGRES_DB"],
    )
    assert env["GRAFANA_ADMIN_PASSWORD"] == "${GRAFANA_ADMIN_PASSWORD:-}"  # from the environment, if at all
    mounts = _mounts(init)
    assert mounts[env["GRAFANA_SECRETS_DIR"]][0] == "grafana-secrets"
    script = PurePosixPath(init["entrypoint"][-1])
    assert mounts[str(script)] == ("./deploy/grafana/init.sh", ["ro"])
    # the data source reads the database password from the file the init script writes
    source = yaml.safe_load((REPO / "deploy/grafana/provisioning/datasources/vitalab.yml").read_text())
    [ds] = source["datasources"]
    assert ds["secureJsonData"]["password"] == "$__file{/run/vitalab/grafana/db.password}"
    assert ds["url"] == "timescaledb:5432"
    assert ds["jsonData"]["database"] == _env(services["timescaledb"])["POSTGRES_DB"]


def test_cluster_profile(services: dict[str, dict[str, Any]]) -> None:
    """Profile `cluster`: three NATS nodes routed to each other, each with JetStream on its own volume and an
    MQTT listener, and two ingesters on the NATS bus sharing one durable consumer; nothing else in it."""
    assert {
        name for name, svc in services.items() if "cluster" in svc.get("profiles", [])
    } == CLUSTER_SERVICES
    volumes = set()
    for node in NATS_NODES:
        svc = services[node]
        cmd = svc["command"]
        assert cmd[cmd.index("--name") + 1] == node
        routes = cmd[cmd.index("--routes") + 1].split(",")
        assert {urlsplit(r).hostname for r in routes} == NATS_NODES - {node}
        assert "-js" in cmd
        data = cmd[cmd.index("-sd") + 1]
        volumes |= {v.split(":")[0] for v in svc["volumes"] if v.split(":")[1] == data}
        assert svc["environment"]["NATS_MQTT_PORT"] == "1883"
        assert "http://127.0.0.1:8222/healthz" in svc["healthcheck"]["test"]
        assert _depends_on(svc) == {"nats-init": {"condition": "service_completed_successfully"}}
        assert svc["build"] == "deploy/nats"
    assert len(volumes) == 3, "each node keeps its JetStream store on a volume of its own"
    conf = (REPO / "deploy" / "nats" / "nats.conf").read_text()
    assert "stream_replicas: 3" in conf
    ids = set()
    for name in ("ingest-nats-1", "ingest-nats-2"):
        svc = services[name]
        env = _env(svc)
        assert env["VITALAB_BUS"] == "nats"
        assert env["VITALAB_NATS_URLS_FILE"] == "/run/vitalab/nats/ingest.urls"
        assert "VITALAB_NATS_CONSUMER" not in env  # both on the default consumer: one durable, shared
        ids.add(env["VITALAB_INGEST_CLIENT_ID"])
        assert svc["command"] == ["ingest"]
        deps = _depends_on(svc)
        assert {d for d, spec in deps.items() if spec["condition"] == "service_healthy"} >= NATS_NODES
    assert len(ids) == 2
