"""Settings: embedded defaults, CATALOGAN_* parsing and validation."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from db.errors import ConfigError
from db.settings import BrokerSettings, DatabaseSettings, DataSettings, SettingsError, StorageSettings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No CATALOGAN_* variable from the developer's shell leaks into these tests."""
    import os

    for name in list(os.environ):
        if name.startswith("CATALOGAN_"):
            monkeypatch.delenv(name)


def test_defaults_are_the_embedded_stack_under_catalogan_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Given no settings, the database is a SQLite file and objects a folder, both in ./catalogan-data/,
    and the broker is the embedded one."""
    monkeypatch.chdir(tmp_path)

    assert DatabaseSettings().url() == f"sqlite:///{tmp_path / 'catalogan-data' / 'catalogan.db'}"
    assert StorageSettings().url() == (tmp_path / "catalogan-data" / "objects").as_uri()
    assert BrokerSettings().embedded
    assert StorageSettings().presigned_url_ttl_seconds == 3600


def test_environment_variables_override_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Given CATALOGAN_* variables, each setting class reads its own, and DATA_DIR moves the embedded files."""
    monkeypatch.setenv("CATALOGAN_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("CATALOGAN_STORAGE_URL", "s3://bucket/prefix")
    monkeypatch.setenv("CATALOGAN_BROKER_URL", "redis://127.0.0.1:6379/3")
    monkeypatch.setenv("CATALOGAN_DATABASE_POOL_SIZE", "12")
    monkeypatch.setenv("CATALOGAN_PRESIGNED_URL_TTL_SECONDS", "60")

    assert DatabaseSettings().url() == f"sqlite:///{tmp_path / 'data' / 'catalogan.db'}"
    assert DatabaseSettings().database_pool_size == 12
    assert StorageSettings().url() == "s3://bucket/prefix"
    assert StorageSettings().presigned_url_ttl_seconds == 60
    assert BrokerSettings().broker_url == "redis://127.0.0.1:6379/3" and not BrokerSettings().embedded
    assert DataSettings().resolved == (tmp_path / "data").resolve()


@pytest.mark.parametrize("scheme", ["postgresql", "postgres"])
def test_plain_postgres_urls_use_psycopg3(monkeypatch: pytest.MonkeyPatch, scheme: str) -> None:
    """Given postgresql:// or postgres://, the URL is rewritten to the psycopg 3 driver we ship."""
    monkeypatch.setenv("CATALOGAN_DATABASE_URL", f"{scheme}://u:p@db:5432/catalogan")

    assert DatabaseSettings().url() == "postgresql+psycopg://u:p@db:5432/catalogan"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("CATALOGAN_DATABASE_POOL_SIZE", "0"),
        ("CATALOGAN_DATABASE_POOL_SIZE", "many"),
        ("CATALOGAN_PRESIGNED_URL_TTL_SECONDS", "0"),
        ("CATALOGAN_PRESIGNED_URL_TTL_SECONDS", str(8 * 24 * 3600)),
    ],
)
def test_out_of_range_values_are_refused(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    """Given a value outside its bounds or of the wrong type, building the settings raises one line that names
    the variable (a ConfigError for the CLI's exit 6, still a ValueError) and never echoes the value."""
    monkeypatch.setenv(name, value)
    cls = DatabaseSettings if "POOL" in name else StorageSettings

    with pytest.raises(SettingsError, match=f"^{name}: ") as error:
        cls()
    assert isinstance(error.value, ConfigError) and isinstance(error.value, ValueError)
    assert "input_value" not in str(error.value) and "\n" not in str(error.value)


def test_settings_are_frozen() -> None:
    """Given a settings object, assigning to it fails: settings are read once and passed down."""
    settings = DatabaseSettings()
    with pytest.raises(ValidationError):
        settings.database_url = "sqlite://"


def test_the_documented_full_stack_password_is_refused_as_a_development_default() -> None:
    """docs/configuration.md's full-stack example carries the password CHANGE_ME (it used `secret`, which a
    production `catalogan serve` refuses, so the example failed as written); copied unchanged, it is still
    refused as a default in production, and a real password passes."""
    import re

    from db.settings import default_credential_problems

    docs = (Path(__file__).resolve().parents[2] / "docs" / "configuration.md").read_text()
    (url,) = re.findall(r"export CATALOGAN_DATABASE_URL=(postgresql\S+)", docs)
    assert default_credential_problems(DatabaseSettings(database_url=url), {}) == [
        "CATALOGAN_DATABASE_URL carries no password or a development default one"
    ]
    real = url.replace("CHANGE_ME", "x7-Kq2-long-random")
    assert default_credential_problems(DatabaseSettings(database_url=real), {}) == []
