from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from tests.conftest import REPO
from vitalab.errors import ConfigError
from vitalab.settings import MqttTarget, Settings, load_settings


def test_settings_come_from_prefixed_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("VITALAB_DATABASE_URL", "postgresql://u@db:5432/vitalab")
    monkeypatch.setenv("VITALAB_MQTT_URL", "mqtts://dev%40gym:s3cret@broker.example:8884")
    monkeypatch.setenv("VITALAB_SITE", "gym-north")
    monkeypatch.setenv("VITALAB_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("VITALAB_INGEST_SHARE_GROUP", "")
    s = load_settings()
    assert s.database_url == "postgresql://u@db:5432/vitalab"
    assert s.site == "gym-north"
    assert s.data_dir == tmp_path
    assert s.ingest_share_group is None
    target = s.mqtt_target()
    assert target == MqttTarget("broker.example", 8884, tls=True, username="dev@gym", password="s3cret")
    assert target.url() == "mqtts://dev@gym@broker.example:8884"  # no password in banners and logs
    assert target.ssl_context() is not None


def test_unset_services_mean_embedded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VITALAB_DATABASE_URL", raising=False)
    monkeypatch.delenv("VITALAB_MQTT_URL", raising=False)
    s = load_settings()
    assert s.database_url is None
    assert s.mqtt_target() is None
    assert (s.api_host, s.api_port) == ("127.0.0.1", 8000)


def test_bad_values_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VITALAB_SITE", "gym/north")
    with pytest.raises(ValidationError, match="site"):
        load_settings()


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("mqtt://localhost", MqttTarget("localhost", 1883)),
        ("mqtts://localhost", MqttTarget("localhost", 8883, tls=True)),
        ("mqtt://ingest:pw@10.0.0.1:1884", MqttTarget("10.0.0.1", 1884, username="ingest", password="pw")),
    ],
)
def test_mqtt_urls(url: str, expected: MqttTarget) -> None:
    assert MqttTarget.parse(url) == expected


@pytest.mark.parametrize("url", ["http://localhost", "mqtt://", "mqtt://host:notaport"])
def test_bad_mqtt_urls(url: str) -> None:
    with pytest.raises(ConfigError) as info:
        MqttTarget.parse(url)
    assert info.value.setting == "mqtt_url"


def test_the_readme_lists_every_setting_and_no_other() -> None:
    """The README's configuration table is the user's list of knobs: one row per setting, named as the
    environment variable, with the default the code has."""
    readme = (REPO / "README.md").read_text()
    table = readme.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in table.splitlines() if line.startswith("| `VITALAB_")]
    documented = {}
    for row in rows:
        name, default = (cell.strip() for cell in row.strip("|").split("|")[:2])
        documented[name.strip("`").removeprefix("VITALAB_").lower()] = default
    assert set(documented) == set(Settings.model_fields)
    for field, info in Settings.model_fields.items():
        default = info.default
        if default is None or isinstance(default, Path):
            continue  # "unset …" and the data dir's home-relative default are described in words
        shown = documented[field]
        expected = str(default).lower() if isinstance(default, bool) else str(default)
        if isinstance(default, float) and default.is_integer():
            expected = str(int(default))
        assert shown.startswith(f"`{expected}`"), (field, shown, expected)
