"""docker-compose.yml, checked without a Docker engine: every catalogan command exists in the CLI, every
CATALOGAN_* variable is a known setting, every long-running service has a healthcheck, the worker reserves a GPU."""

from __future__ import annotations

import importlib
import re
from pathlib import Path
from typing import Any

import click
import pytest
import yaml
from pydantic_settings import BaseSettings

from scheduler.cli.root import cli

ROOT = Path(__file__).resolve().parents[2]
SETTINGS_MODULES = ("db.settings", "db.pipeline_settings", "scheduler.settings", "models.registry")
EXTERNAL_COMMANDS = {"ray"}  # the Ray head runs Ray's own CLI, installed with ray[train]
ONE_SHOT = {"minio-init", "migrate", "register-model"}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """The parsed compose file."""
    return dict(yaml.safe_load((ROOT / "docker-compose.yml").read_text()))


def known_settings() -> set[str]:
    """Every CATALOGAN_* variable some settings class reads."""
    for name in SETTINGS_MODULES:
        importlib.import_module(name)
    names: set[str] = set()
    pending = list(BaseSettings.__subclasses__())
    while pending:
        cls = pending.pop()
        pending += cls.__subclasses__()
        prefix = str(cls.model_config.get("env_prefix", ""))
        if prefix.upper() == "CATALOGAN_":
            names |= {f"CATALOGAN_{field.upper()}" for field in cls.model_fields}
    return names


def command_exists(args: list[str]) -> bool:
    """True when `catalogan <args>` names a command (and its options parse)."""
    ctx = click.Context(cli, info_name="catalogan")
    command: click.Command = cli
    words = list(args)
    while isinstance(command, click.Group) and words and not words[0].startswith("-"):
        sub = command.get_command(ctx, words.pop(0))
        if sub is None:
            return False
        ctx = click.Context(sub, parent=ctx, info_name=sub.name)
        command = sub
    command.make_context(command.name, words, parent=ctx.parent)  # raises on unknown options
    return True


def test_every_catalogan_service_command_exists_in_the_cli(compose: dict[str, Any]) -> None:
    """Given each service built from our image, when its command is parsed by the CLI, then it exists."""
    checked = []
    for name, service in compose["services"].items():
        command = service.get("command")
        if "build" not in service or not command:
            continue
        assert isinstance(command, list), f"{name}: use the exec form for commands"
        if command[0] in EXTERNAL_COMMANDS:
            continue
        assert command[0] == "catalogan", f"{name}: {command}"
        assert command_exists(command[1:]), f"{name}: `{' '.join(command)}` is not a catalogan command"
        checked.append(name)
    assert {"api", "worker", "beat", "migrate", "register-model"} <= set(checked)


def test_every_catalogan_variable_is_a_known_setting(compose: dict[str, Any]) -> None:
    """Given the whole compose text, when CATALOGAN_* names are collected, then each one is read by a setting."""
    used = set(re.findall(r"\bCATALOGAN_[A-Z0-9_]+", (ROOT / "docker-compose.yml").read_text()))
    assert used, "the compose file configures nothing?"
    unknown = used - known_settings()
    assert not unknown, f"not settings of any class: {sorted(unknown)}"


def test_services_have_healthchecks_and_start_in_order(compose: dict[str, Any]) -> None:
    """Given the services, when read, then each long-running one has a healthcheck and waits on what it needs."""
    services = compose["services"]
    assert {"postgres", "redis", "minio", "minio-init", "api", "worker", "beat", "ray-head"} <= set(services)
    for name, service in services.items():
        if name not in ONE_SHOT:
            assert "healthcheck" in service, f"{name} has no healthcheck"
    assert services["api"]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert "mc mb" in " ".join(services["minio-init"]["command"])


def test_the_worker_reserves_gpus(compose: dict[str, Any]) -> None:
    """Given the worker service, when read, then it reserves NVIDIA GPUs (the CPU overlay removes that)."""
    devices = compose["services"]["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert "!reset" in (ROOT / "docker-compose.cpu.yml").read_text()


def test_the_dockerfile_builds_one_image_with_the_cli() -> None:
    """Given the Dockerfile, when read, then it installs the project and defaults to serving the API."""
    text = (ROOT / "Dockerfile").read_text()
    assert 'pip install "."' in text and 'CMD ["catalogan", "serve"' in text
    for package in ("db", "models", "workers", "scheduler"):
        assert f"COPY {package} ./{package}" in text
