"""docs/configuration.md documents every CATALOGAN_* setting that a settings class reads."""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path

import pytest
from pydantic_settings import BaseSettings

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "configuration.md"


def _settings_modules() -> list[str]:
    """Every module of the four packages that declares a pydantic-settings class (found by reading the source)."""
    found = []
    for package in ["db", "models", "workers", "scheduler"]:
        for path in sorted((ROOT / package).rglob("*.py")):
            if "(BaseSettings)" in path.read_text(encoding="utf-8"):
                found.append(".".join(path.relative_to(ROOT).with_suffix("").parts))
    return found


SETTINGS_MODULES = _settings_modules()


def _variables(module_name: str) -> list[str]:
    module = importlib.import_module(module_name)
    names = []
    for cls in vars(module).values():
        if inspect.isclass(cls) and issubclass(cls, BaseSettings) and cls.__module__ == module_name:
            prefix = str(cls.model_config.get("env_prefix", ""))
            names += [f"{prefix}{field}".upper() for field in cls.model_fields]
    return names


@pytest.mark.parametrize("module_name", SETTINGS_MODULES)
def test_every_setting_is_documented(module_name: str) -> None:
    """Given the settings classes of a module, each environment variable they read appears in the docs."""
    text = DOC.read_text(encoding="utf-8")
    variables = _variables(module_name)

    assert variables, f"{module_name} declares no settings"
    missing = [name for name in variables if f"`{name}`" not in text]
    assert missing == [], f"add these to docs/configuration.md: {missing}"


def test_the_aws_variables_are_documented() -> None:
    """Given the S3 backend reads the standard AWS variables, the docs name each of them."""
    text = DOC.read_text(encoding="utf-8")
    for name in [
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_REGION",
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_S3",
    ]:
        assert name in text
