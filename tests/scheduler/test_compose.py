"""docker-compose.yml, checked without a Docker engine: it is a valid Compose file (the specification's JSON schema,
vendored in tests/scheduler/data/), every catalogan command exists in the CLI, every CATALOGAN_* variable is a
known setting, and the properties a production stack needs hold: real healthchecks, start order, no admin port
published to the network, a least-privilege S3 user, no default secrets, pinned images, one torch/CUDA pin."""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path
from typing import Any

import click
import jsonschema
import pytest
import yaml
from click.testing import CliRunner
from pydantic_settings import BaseSettings

from db.errors import ConfigError
from db.settings import BrokerSettings, DatabaseSettings, StorageSettings
from scheduler.api.app import build_services
from scheduler.cli.root import cli
from scheduler.settings import ApiSettings, WebhookSettings
from tests.scheduler.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = Path(__file__).resolve().parent / "data" / "compose-spec.json"
SETTINGS_MODULES = ("db.settings", "db.pipeline_settings", "scheduler.settings", "models.registry")
EXTERNAL_COMMANDS = {"ray"}  # the Ray head runs Ray's own CLI, installed with ray[train]
ONE_SHOT = {"minio-init", "migrate", "register-model"}
ADMIN_PORTS = {8265, 9001}  # the Ray dashboard (job submission = code execution), the MinIO console
# torch/CUDA pairs PyTorch publishes wheels for (PyTorch's RELEASE.md matrix: 2.13 = CUDA 12.6 and 13.0 stable,
# 13.2 experimental; cu128 was dropped in 2.12). The test reads the pin, never the network.
PUBLISHED_TORCH_CUDA = {("2.13.0", "cu126"), ("2.13.0", "cu130"), ("2.13.0", "cu132")}


class _ComposeLoader(yaml.SafeLoader):
    """YAML loader that also reads Compose's `!reset` / `!override` tags (as their plain value)."""


def _tagged(loader: yaml.SafeLoader, _suffix: str, node: yaml.Node) -> Any:
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node)
    if isinstance(node, yaml.MappingNode):
        return loader.construct_mapping(node)
    return loader.construct_scalar(node)  # type: ignore[arg-type]


_ComposeLoader.add_multi_constructor("!", _tagged)


def load(name: str) -> dict[str, Any]:
    """A compose file of the repository, parsed (merge keys resolved)."""
    return dict(yaml.load((ROOT / name).read_text(), Loader=_ComposeLoader))


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """The parsed compose file."""
    return load("docker-compose.yml")


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


def healthcheck_words(service: dict[str, Any]) -> list[str]:
    """The healthcheck's command as words (CMD form as is; CMD-SHELL split like a shell, `$$` unescaped)."""
    test = service["healthcheck"]["test"]
    if test[0] == "CMD-SHELL":
        return shlex.split(test[1].replace("$$", "$"))
    assert test[0] == "CMD", test
    return list(test[1:])


def test_the_compose_files_are_valid_compose_specification_documents(compose: dict[str, Any]) -> None:
    """Given the Compose specification's JSON schema, when both compose files are validated, then no error."""
    schema = json.loads(SCHEMA.read_text())
    validator = jsonschema.Draft7Validator(schema)
    for name in ("docker-compose.yml", "docker-compose.cpu.yml"):
        errors = [
            f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(load(name))
        ]
        assert not errors, f"{name}: {errors}"
    broken = {
        **compose,
        "services": {**compose["services"], "api": {**compose["services"]["api"], "ports": 8000}},
    }
    assert list(validator.iter_errors(broken)), "the schema must catch a malformed service"


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
    text = (ROOT / "docker-compose.yml").read_text()
    used = set(re.findall(r"\bCATALOGAN_[A-Z0-9_]+", text))
    assert used, "the compose file configures nothing?"
    own_secrets = {"CATALOGAN_S3_ACCESS_KEY", "CATALOGAN_S3_SECRET_KEY", "CATALOGAN_IMAGE_TAG"}  # .env only
    unknown = used - known_settings() - own_secrets
    assert not unknown, f"not settings of any class: {sorted(unknown)}"


def test_services_start_in_order(compose: dict[str, Any]) -> None:
    """Given the services, when read, then one-shot steps gate the long-running ones by completing successfully:
    the API and the workers wait for the migration and the shipped model's registration (no 422 on first jobs)."""
    services = compose["services"]
    assert {"postgres", "redis", "minio", "minio-init", "api", "worker", "beat", "ray-head"} <= set(services)
    for name in ("api", "worker"):
        needs = services[name]["depends_on"]
        for step in ("migrate", "register-model", "minio-init"):
            assert needs[step]["condition"] == "service_completed_successfully", (name, step)
    assert (
        services["register-model"]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    )
    for name in ONE_SHOT:
        assert services[name]["restart"] == "no"


def test_long_running_services_have_real_healthchecks(compose: dict[str, Any]) -> None:
    """Given each long-running service, when its healthcheck is read, then it exists and the worker's and beat's
    are catalogan commands that check liveness (a ping/lease, a heartbeat), not a /proc search that matches itself."""
    services = compose["services"]
    for name, service in services.items():
        if name not in ONE_SHOT and not service.get("profiles"):
            assert "healthcheck" in service, f"{name} has no healthcheck"
    for name, option in (("worker", "--alive-on"), ("beat", "--check-heartbeat")):
        words = healthcheck_words(services[name])
        assert "/proc" not in " ".join(words), name
        assert words[0] == "catalogan" and option in words, words
        assert command_exists([w if w != "$HOSTNAME" else "host" for w in words[1:]]), words
    beat_command = services["beat"]["command"]
    beat_check = healthcheck_words(services["beat"])
    heartbeat = beat_command[beat_command.index("--heartbeat-file") + 1]
    assert beat_check[beat_check.index("--check-heartbeat") + 1] == heartbeat


def test_the_beat_healthcheck_fails_without_a_fresh_heartbeat(tmp_path: Path) -> None:
    """Given no heartbeat file, a fresh one and a stale one, when the beat healthcheck runs, then it fails,
    passes and fails."""
    runner = CliRunner()
    heartbeat = tmp_path / "beat.alive"
    check = ["beat", "--check-heartbeat", str(heartbeat), "--max-age", "60"]
    missing = runner.invoke(cli, check)
    assert missing.exit_code == 1 and "no heartbeat" in missing.output
    heartbeat.touch()
    assert runner.invoke(cli, check).exit_code == 0
    stale = time.time() - 120
    os.utime(heartbeat, (stale, stale))
    old = runner.invoke(cli, check)
    assert old.exit_code == 1 and "ago" in old.output


def test_no_admin_port_is_published_to_the_network(compose: dict[str, Any]) -> None:
    """Given every published port, when read, then only the API listens on all interfaces; the Ray dashboard and
    the MinIO console are bound to 127.0.0.1 and only exist behind the `admin` profile."""
    admin_found = set()
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            parts = str(port).split(":")
            target = int(parts[-1])
            if target == 8000 and name == "api":
                continue
            assert len(parts) == 3 and parts[0] == "127.0.0.1", f"{name} publishes {port} on every interface"
            if target in ADMIN_PORTS:
                assert service.get("profiles") == ["admin"], (
                    f"{name} publishes admin port {target} by default"
                )
                admin_found.add(target)
    assert admin_found == ADMIN_PORTS
    ray_command = " ".join(compose["services"]["ray-head"]["command"])
    assert "ports" not in compose["services"]["ray-head"] and "--dashboard-host" in ray_command


def test_services_use_a_least_privilege_s3_user_and_no_default_secrets(compose: dict[str, Any]) -> None:
    """Given the services' S3 credentials, when read, then they are not MinIO's root user, minio-init creates
    that user with a policy limited to the catalogan bucket, and every secret must come from the operator."""
    env = compose["x-catalogan-env"]
    minio = compose["services"]["minio"]["environment"]
    assert env["AWS_ACCESS_KEY_ID"] != minio["MINIO_ROOT_USER"]
    init = " ".join(compose["services"]["minio-init"]["command"])
    assert "mc admin user add" in init and "mc admin policy attach local catalogan-rw" in init
    policy = json.loads(init[init.index("{") : init.rindex("}") + 1])
    resources = {r for statement in policy["Statement"] for r in statement["Resource"]}
    assert resources == {"arn:aws:s3:::catalogan", "arn:aws:s3:::catalogan/*"}
    actions = {a for statement in policy["Statement"] for a in statement["Action"]}
    assert not any(a.endswith("*") or a.startswith("admin:") for a in actions), actions
    text = (ROOT / "docker-compose.yml").read_text()
    for secret in ("POSTGRES_PASSWORD", "MINIO_ROOT_PASSWORD", "CATALOGAN_S3_SECRET_KEY", "RAY_AUTH_TOKEN"):
        uses = re.findall(r"\$\{" + secret + r"([^}]*)\}", text)
        assert uses and all(use.startswith(":?") for use in uses), f"{secret} has a default: {uses}"
    assert env["CATALOGAN_ENVIRONMENT"] == "${CATALOGAN_ENVIRONMENT:-production}"


def test_the_s3_user_may_abort_a_failed_multipart_upload(compose: dict[str, Any]) -> None:
    """Given the store uploads a manifest over 16 MiB in parts and aborts the upload when a part fails
    (db/storage/s3.py `put_file`), when the services' policy is read, then it grants the multipart actions on
    the bucket's objects (without them the abort was refused and the parts stayed in the bucket)."""
    init = " ".join(compose["services"]["minio-init"]["command"])
    policy = json.loads(init[init.index("{") : init.rindex("}") + 1])
    on_objects = {
        action
        for statement in policy["Statement"]
        if statement["Resource"] == ["arn:aws:s3:::catalogan/*"]
        for action in statement["Action"]
    }
    assert {"s3:PutObject", "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts"} <= on_objects


def stop_grace_seconds(service: dict[str, Any]) -> float:
    """A service's `stop_grace_period` in seconds (a Compose duration such as `1m30s`); Docker's 10 s when unset."""
    duration = str(service.get("stop_grace_period", "10s"))
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 1e-6}
    parts = re.findall(r"([0-9.]+)(h|ms|us|m|s)", duration)
    assert "".join(number + unit for number, unit in parts) == duration, f"not a duration: {duration}"
    return sum(float(number) * units[unit] for number, unit in parts)


def test_each_service_is_given_the_time_its_own_graceful_stop_takes(compose: dict[str, Any]) -> None:
    """Given Docker SIGKILLs a service stop_grace_period after SIGTERM (10 s when unset), when the long-running
    services are read, then each waits longer than its own stop: the API its requests' graceful shutdown
    (CATALOGAN_API_TIMEOUT_GRACEFUL_SHUTDOWN_SECONDS, 30 s), beat its webhook thread (2 x the webhook timeout)
    and then its retention thread (60 s, scheduler/cli/beat_commands.py), the worker more than the default."""
    services = compose["services"]
    api_env = services["api"]["environment"]
    graceful = float(
        api_env.get(
            "CATALOGAN_API_TIMEOUT_GRACEFUL_SHUTDOWN_SECONDS",
            ApiSettings.model_fields["api_timeout_graceful_shutdown_seconds"].default,
        )
    )
    assert stop_grace_seconds(services["api"]) >= graceful + 5
    webhook_join = 2 * WebhookSettings.model_fields["webhook_timeout_seconds"].default
    assert stop_grace_seconds(services["beat"]) >= webhook_join + 60 + 5
    assert stop_grace_seconds(services["worker"]) > 10


def test_production_refuses_the_development_credentials() -> None:
    """Given production with PostgreSQL, S3 and Redis configured but the old compose passwords, when the API's
    services are built, then it refuses to start and names each default credential."""
    for password, secret in (("catalogan", "a-real-one"), ("a-real-one", "catalogan-dev-secret")):
        with pytest.raises(ConfigError) as error, pytest.MonkeyPatch.context() as env:
            env.setenv("AWS_SECRET_ACCESS_KEY", secret)
            build_services(
                ApiSettings(environment="production"),
                database=DatabaseSettings(database_url=f"postgresql://catalogan:{password}@db:5432/c"),
                storage=StorageSettings(storage_url="s3://catalogan/prod"),
                broker=BrokerSettings(broker_url="redis://redis:6379/0"),
            )
        named = "CATALOGAN_DATABASE_URL" if password == "catalogan" else "AWS_SECRET_ACCESS_KEY"
        assert named in str(error.value)


def test_presigned_urls_are_signed_for_the_public_endpoint(compose: dict[str, Any]) -> None:
    """Given the services' environment, when read, then presigned URLs get a public S3 endpoint that differs
    from the in-network one the services use."""
    env = compose["x-catalogan-env"]
    assert env["AWS_ENDPOINT_URL"] == "http://minio:9000"
    assert "localhost:9000" in env["CATALOGAN_STORAGE_PUBLIC_ENDPOINT_URL"]
    assert "127.0.0.1:9000:9000" in compose["services"]["minio"]["ports"]


def test_training_connects_to_the_ray_head(compose: dict[str, Any]) -> None:
    """Given the Ray head, when read, then `catalogan train` run there finds the cluster through RAY_ADDRESS
    (the head's own GCS port), which the train command reads."""
    head = compose["services"]["ray-head"]
    port = next(w.split("=")[1] for w in head["command"] if w.startswith("--port="))
    assert head["environment"]["RAY_ADDRESS"] == f"ray-head:{port}"
    train = cli.get_command(click.Context(cli), "train")
    assert train is not None
    documented = " ".join(
        p.envvar if isinstance(p.envvar, str) else " ".join(p.envvar or []) for p in train.params
    )
    assert "RAY_ADDRESS" in documented or "RAY_ADDRESS" in (ROOT / "models" / "cli.py").read_text()


def _env_files(text: str) -> set[str]:
    """The variables the `.env` printf one-liner of a text (README, compose header) writes."""
    found = re.search(r"printf '([^']*)'", text)
    assert found, "no .env one-liner"
    return set(re.findall(r"([A-Z_]+)=%s", found.group(1)))


def test_the_ray_head_authenticates_its_healthcheck_and_training_with_a_token(
    compose: dict[str, Any],
) -> None:
    """Given the Ray head, when read, then token authentication is set explicitly (RAY_AUTH_MODE=token, the
    token from the operator's .env, no default) instead of left to Ray, which turns it on by itself when a
    token file exists and then refuses the healthcheck's `ray status`; the healthcheck is `ray status` on the
    head's own port in exec form (it inherits the container's environment, token included); the README's and
    the compose header's .env one-liners write the token; and the installed Ray reads both variables."""
    head = compose["services"]["ray-head"]
    assert head["environment"]["RAY_AUTH_MODE"] == "token"
    assert re.fullmatch(r"\$\{RAY_AUTH_TOKEN:\?[^}]+\}", head["environment"]["RAY_AUTH_TOKEN"])
    port = next(w.split("=")[1] for w in head["command"] if w.startswith("--port="))
    assert head["healthcheck"]["test"][0] == "CMD"
    assert healthcheck_words(head) == ["ray", "status", f"--address=127.0.0.1:{port}"]
    for text in ((ROOT / "README.md").read_text(), (ROOT / "docker-compose.yml").read_text()):
        assert "RAY_AUTH_TOKEN" in _env_files(text)
    from ray._private.authentication import authentication_token_setup

    assert authentication_token_setup.AUTH_MODE_ENV_VAR == "RAY_AUTH_MODE"
    raylet = Path(authentication_token_setup.__file__).parents[2] / "_raylet.so"
    assert b"RAY_AUTH_TOKEN" in raylet.read_bytes()  # the C++ token loader's environment variable


@pytest.mark.slow
@pytest.mark.integration
def test_the_ray_head_healthcheck_passes_with_a_token_file_left_in_the_container(
    compose: dict[str, Any], tmp_path: Path
) -> None:
    """Given the compose file's ray-head command and environment (ports moved off Redis's, a token in place of
    the .env one) and a ~/.ray/auth_token left by an earlier `ray.init()`, when the head starts and the
    healthcheck's command runs with the container's environment, then it passes, and a driver connecting the
    way `catalogan train` does (an explicit address) runs a task. Without the explicit token settings the
    head turns token authentication on from the file and both were refused."""
    head = compose["services"]["ray-head"]
    gcs, dashboard = free_port(), free_port()
    home = tmp_path / "home"
    (home / ".ray").mkdir(parents=True)
    (home / ".ray" / "auth_token").write_text("a-token-some-ray-init-left-here")
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("RAY_")},
        **{k: str(v) for k, v in head["environment"].items() if k.startswith("RAY_")},
        "HOME": str(home),
        "RAY_ADDRESS": f"127.0.0.1:{gcs}",
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    if "RAY_AUTH_TOKEN" in env:
        env["RAY_AUTH_TOKEN"] = os.urandom(32).hex()  # what the operator's .env holds
    ray = str(Path(sys.executable).parent / "ray")
    words = [w if not w.startswith("--port=") else f"--port={gcs}" for w in head["command"]]
    assert words[0] == "ray"
    # Ray's socket paths must fit in 107 bytes: a short folder, not pytest's tmp_path.
    temp = Path(tempfile.mkdtemp(prefix="rh-", dir="/tmp"))
    command = [ray, *words[1:], f"--dashboard-port={dashboard}", f"--temp-dir={temp}"]
    log = (tmp_path / "head.log").open("w")
    started = subprocess.Popen(command, env=env, stdout=log, stderr=log, start_new_session=True)
    try:
        check = [ray, *healthcheck_words(head)[1:-1], f"--address=127.0.0.1:{gcs}"]
        deadline = time.monotonic() + 120
        while True:
            answer = subprocess.run(check, env=env, capture_output=True, text=True, timeout=60)
            refused = "AuthenticationError" in answer.stderr
            if answer.returncode == 0 or refused or time.monotonic() > deadline or started.poll() is not None:
                break
            time.sleep(2)
        assert answer.returncode == 0, (answer.stderr[-1500:], (tmp_path / "head.log").read_text()[-1500:])
        driver = (
            f"import ray; ray.init(address='127.0.0.1:{gcs}', log_to_driver=False); "
            "print(ray.get(ray.remote(lambda: 6 * 7).remote()))"
        )
        ran = subprocess.run(
            [sys.executable, "-c", driver], env=env, capture_output=True, text=True, timeout=120
        )
        assert ran.stdout.strip().endswith("42"), ran.stderr[-1500:]
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(started.pid, signal.SIGKILL)  # the head's session: `ray start` and what it started
        started.wait(30)
        log.close()
        shutil.rmtree(temp, ignore_errors=True)


def test_images_are_pinned(compose: dict[str, Any]) -> None:
    """Given every image, when read, then it names a version tag (never `latest`, never untagged)."""
    for name, service in compose["services"].items():
        image = service["image"]
        repository, _, tag = image.rpartition(":")
        assert repository and tag and tag != "latest", f"{name}: {image}"
        assert re.search(r"\d", tag), f"{name}: {image} is not a version"


def test_the_worker_reserves_gpus(compose: dict[str, Any]) -> None:
    """Given the worker service, when read, then it reserves NVIDIA GPUs (the CPU overlay removes that)."""
    devices = compose["services"]["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert "!reset" in (ROOT / "docker-compose.cpu.yml").read_text()


def test_one_torch_cuda_pin_that_pytorch_publishes_is_used_by_the_dockerfile_and_the_readme() -> None:
    """Given models/torch-cuda.txt, when read, then it pins one torch version and one CUDA index that PyTorch
    publishes together, the Dockerfile installs from it (no other torch pin), and the README points at it."""
    lines = [
        line.split("#")[0].strip()
        for line in (ROOT / "models" / "torch-cuda.txt").read_text().splitlines()
        if line.split("#")[0].strip()
    ]
    index = next(line.split()[1] for line in lines if line.startswith("--index-url"))
    version = next(line.split("==")[1] for line in lines if line.startswith("torch=="))
    assert (version, index.rstrip("/").rsplit("/", 1)[1]) in PUBLISHED_TORCH_CUDA, (version, index)
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "COPY models/torch-cuda.txt" in dockerfile and "pip install -r /tmp/torch-cuda.txt" in dockerfile
    assert not re.search(r"torch==\d", dockerfile) and "download.pytorch.org/whl/cu" not in dockerfile
    readme = (ROOT / "README.md").read_text()
    assert "pip install -r models/torch-cuda.txt" in readme
    assert "whl/cu124" not in readme


def test_the_dockerfile_builds_one_image_with_the_cli() -> None:
    """Given the Dockerfile, when read, then it installs the project with its server and cluster extras (the
    Ray head's dashboard and `ray://` need `ray[default,client]`), Debian's Fashion-MNIST (the README's
    training step and the shipped model's memorization index read it) and serves the API; the build context
    leaves out the virtualenv and git history."""
    text = (ROOT / "Dockerfile").read_text()
    assert 'pip install ".[server,cluster]"' in text and 'CMD ["catalogan", "serve"' in text
    cluster = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"][
        "cluster"
    ]
    ray = next(requirement for requirement in cluster if requirement.startswith("ray["))
    assert {"default", "client", "train"} <= set(ray.split("[")[1].split("]")[0].split(","))
    assert re.search(r"apt-get install -y --no-install-recommends dataset-fashion-mnist", text)
    from models.data.fashion_mnist import DEFAULT_ROOT

    assert str(DEFAULT_ROOT) == "/usr/share/datasets/fashion-mnist"  # where Debian's package puts the files
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", ".git"} <= set(ignored)
    assert re.search(r"^FROM python:3\.11\.\d+-slim", text, re.M)
    for package in ("db", "models", "workers", "scheduler"):
        assert f"COPY {package} ./{package}" in text
