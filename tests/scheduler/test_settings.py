"""Scheduler settings refuse unsafe combinations when they load, not in production traffic."""

from __future__ import annotations

from pathlib import Path

import pytest

from db.errors import ConfigError
from db.job_specs import API_MAX_IMAGES_PER_ITEM, MAX_IMAGES_PER_JOB
from db.settings import BrokerSettings, DatabaseSettings, StorageSettings
from scheduler.api.app import build_services
from scheduler.settings import ApiSettings, ClientSettings, WebhookSettings


def test_production_refuses_cors_wildcard(monkeypatch: pytest.MonkeyPatch) -> None:
    """Given CATALOGAN_CORS_ORIGINS='["*"]' in production, when settings load, then they refuse."""
    monkeypatch.setenv("CATALOGAN_ENVIRONMENT", "production")
    monkeypatch.setenv("CATALOGAN_CORS_ORIGINS", '["*"]')
    with pytest.raises(ConfigError, match="CORS"):
        ApiSettings()


def test_production_refuses_private_webhook_targets(monkeypatch: pytest.MonkeyPatch) -> None:
    """Given private webhook targets allowed in production, when settings load, then they refuse."""
    monkeypatch.setenv("CATALOGAN_ENVIRONMENT", "production")
    monkeypatch.setenv("CATALOGAN_WEBHOOK_ALLOW_PRIVATE_TARGETS", "true")
    with pytest.raises(ConfigError, match="PRIVATE_TARGETS"):
        WebhookSettings()


def test_production_refuses_the_embedded_stack(tmp_path: Path) -> None:
    """Given production and no database, store or broker URL, when the app's services are built, then each
    missing one is named."""
    with pytest.raises(ConfigError) as error:
        build_services(
            ApiSettings(environment="production"),
            database=DatabaseSettings(database_url=""),
            storage=StorageSettings(storage_url=""),
            broker=BrokerSettings(broker_url=""),
        )
    for name in ("CATALOGAN_DATABASE_URL", "CATALOGAN_STORAGE_URL", "CATALOGAN_BROKER_URL"):
        assert name in str(error.value)


def test_out_of_range_limits_are_refused() -> None:
    """Given a 0-byte body limit or a 10-minute preview timeout, when settings load, then they refuse."""
    with pytest.raises(ValueError):
        ApiSettings(max_request_bytes=0)
    with pytest.raises(ValueError):
        ApiSettings(preview_timeout_seconds=600)


def test_operator_bounds_may_tighten_the_declared_bounds_but_not_widen_them() -> None:
    """Given the bounds of db.job_specs, when an operator asks for more images per item or per job than they
    allow, then the settings refuse, naming the variable; tighter bounds load."""
    with pytest.raises(ConfigError, match="CATALOGAN_MAX_IMAGES_PER_ITEM"):
        ApiSettings(max_images_per_item=API_MAX_IMAGES_PER_ITEM + 1)
    with pytest.raises(ConfigError, match="CATALOGAN_MAX_IMAGES_PER_JOB"):
        ApiSettings(max_images_per_job=MAX_IMAGES_PER_JOB + 1)
    assert ApiSettings(max_images_per_item=10, max_images_per_job=20).max_images_per_job == 20


def test_the_cli_names_the_missing_api_key() -> None:
    """Given no CATALOGAN_API_KEY, when a command needs it, then the error says how to get one."""
    with pytest.raises(ConfigError, match="catalogan keys create"):
        ClientSettings(api_key="").require_key()
