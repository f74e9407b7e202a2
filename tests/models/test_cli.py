"""`catalogan models list|show|promote|retire|register-default` and `catalogan train` argument errors, through the real CLI."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from db.cli_support import ExitCode, exit_code_for
from db.engine import make_engine, make_session_factory
from models.registry import register_version
from scheduler.cli.root import cli
from tests.cli_results import one_error_line


@pytest.fixture
def registry_env(sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """CATALOGAN_DATABASE_URL set to a fresh SQLite database holding fashion-cgan@1 (weak) and @2 (good)."""
    monkeypatch.setenv("CATALOGAN_DATABASE_URL", sqlite_url)
    factory = make_session_factory(make_engine(sqlite_url))
    for metrics in ({"conditional_accuracy": 0.4, "cas": 0.3}, {"conditional_accuracy": 0.97, "cas": 0.88}):
        register_version(
            factory,
            name="fashion-cgan",
            preset="fashion-cgan",
            checkpoint_uri="file:///x/generator.pt",
            checkpoint_sha256="0" * 64,
            model_config={"architecture": "cgan", "categories": ["a"]},
            data_fingerprint="sha256:d",
            metrics=metrics,
        )
    return sqlite_url


def test_list_show_promote_and_retire(registry_env: str) -> None:
    runner = CliRunner()
    listed = runner.invoke(cli, ["models", "list", "--json"])
    assert listed.exit_code == 0, listed.output
    assert [(v["ref"], v["status"]) for v in json.loads(listed.output)] == [
        ("fashion-cgan@1", "candidate"),
        ("fashion-cgan@2", "candidate"),
    ]
    # Promoting the weak version is refused with the CONFLICT exit code and a one-line reason
    refused = runner.invoke(cli, ["models", "promote", "fashion-cgan@1"])
    assert refused.exit_code == ExitCode.CONFLICT
    assert "below the promotion gates" in refused.output and "Traceback" not in refused.output
    # The good one is promoted, and `show NAME` then finds it
    assert runner.invoke(cli, ["models", "promote", "fashion-cgan@2"]).exit_code == 0
    shown = json.loads(runner.invoke(cli, ["models", "show", "fashion-cgan", "--json"]).output)
    assert shown["ref"] == "fashion-cgan@2" and shown["status"] == "production"
    # --force overrides the gates; retire works on an exact version (production: with --yes)
    assert runner.invoke(cli, ["models", "promote", "fashion-cgan@1", "--force"]).exit_code == 0
    retired = runner.invoke(cli, ["models", "retire", "fashion-cgan@1", "--yes", "--json"])
    assert json.loads(retired.output)["status"] == "retired"
    missing = runner.invoke(cli, ["models", "show", "nope@3"])
    assert missing.exit_code == ExitCode.NOT_FOUND


def _statuses() -> dict[str, str]:
    listed = CliRunner().invoke(cli, ["models", "list", "--json"])
    assert listed.exit_code == 0, listed.output
    return {version["ref"]: version["status"] for version in json.loads(listed.output)}


def test_retire_refuses_a_bare_name_and_leaves_the_production_version_alone(registry_env: str) -> None:
    """Given fashion-cgan@2 in production, when an operator runs `models retire fashion-cgan` (a bare name,
    which resolves to the production version), then it is one usage line naming the argument and the
    NAME@VERSION rule, exit 2, and @2 is still production: before, it was retired at once, exit 0."""
    runner = CliRunner()
    assert runner.invoke(cli, ["models", "promote", "fashion-cgan@2"]).exit_code == 0
    result = runner.invoke(cli, ["models", "retire", "fashion-cgan"])
    assert result.exit_code == ExitCode.USAGE, result.output
    line = one_error_line(result)
    assert "'REF'" in line and "NAME@VERSION" in line and "models list --name fashion-cgan" in line
    assert _statuses() == {"fashion-cgan@1": "candidate", "fashion-cgan@2": "production"}


def test_retiring_the_production_version_needs_yes_and_restore_brings_it_back(registry_env: str) -> None:
    """Given fashion-cgan@2 in production, when it is retired without --yes, then exit 2 naming --yes and nothing
    changes; with --yes it is retired, `models promote` says to restore it first (exit 4), and `models restore`
    makes it a candidate that `models promote` puts back in production (before, nothing could)."""
    runner = CliRunner()
    assert runner.invoke(cli, ["models", "promote", "fashion-cgan@2"]).exit_code == 0
    refused = runner.invoke(cli, ["models", "retire", "fashion-cgan@2"])
    assert refused.exit_code == ExitCode.USAGE, refused.output
    assert "production" in one_error_line(refused) and "--yes" in one_error_line(refused)
    assert _statuses()["fashion-cgan@2"] == "production"

    assert runner.invoke(cli, ["models", "retire", "fashion-cgan@2", "--yes"]).exit_code == 0
    assert _statuses()["fashion-cgan@2"] == "retired"
    promote = runner.invoke(cli, ["models", "promote", "fashion-cgan@2"])
    assert promote.exit_code == ExitCode.CONFLICT, promote.output
    assert "catalogan models restore fashion-cgan@2" in one_error_line(promote)

    restored = runner.invoke(cli, ["models", "restore", "fashion-cgan@2", "--json"])
    assert restored.exit_code == 0, restored.output
    assert json.loads(restored.output)["status"] == "candidate"
    assert runner.invoke(cli, ["models", "promote", "fashion-cgan@2"]).exit_code == 0
    assert _statuses() == {"fashion-cgan@1": "candidate", "fashion-cgan@2": "production"}
    # A candidate is not retired: restoring it is an invalid transition, and a bare name is refused as by retire
    assert runner.invoke(cli, ["models", "restore", "fashion-cgan@1"]).exit_code == ExitCode.CONFLICT
    assert runner.invoke(cli, ["models", "restore", "fashion-cgan"]).exit_code == ExitCode.USAGE


@pytest.mark.parametrize(
    ("name", "code", "words"),
    [
        ("a b", ExitCode.USAGE, "Invalid value for '--name'"),
        ("fashion-cgan@2", ExitCode.USAGE, "Invalid value for '--name'"),
        ("nosuch", ExitCode.NOT_FOUND, "model 'nosuch' has no registered version"),
    ],
)
def test_models_list_name_must_be_a_valid_name_with_versions(
    registry_env: str, name: str, code: ExitCode, words: str
) -> None:
    """Given a registry of fashion-cgan versions, when `models list --name` names something no model can be
    called (exit 2) or a model with no version (exit 3), then one line says so: before, both printed a bare
    header and exit 0, as if the model simply had no versions."""
    result = CliRunner().invoke(cli, ["models", "list", "--name", name])
    assert result.exit_code == code, result.output
    assert words in one_error_line(result)
    listed = CliRunner().invoke(cli, ["models", "list", "--name", "fashion-cgan", "--json"])
    assert [version["ref"] for version in json.loads(listed.output)] == ["fashion-cgan@1", "fashion-cgan@2"]


def test_train_refuses_an_unknown_preset_before_starting_ray() -> None:
    result = CliRunner().invoke(cli, ["train", "--preset", "nope", "--steps", "1"])
    assert result.exit_code == ExitCode.USAGE
    assert "unknown preset 'nope'" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--d-warmup-steps", "1"], "--d-warmup-steps needs --init-from"),
        (["--resume"], "nothing to resume: no run of 'tiny'"),
        (["--eval-every", "10", "--data", "{tmp}"], "--eval-every needs --data fashion-mnist"),
        (["--gpus", "--workers", "2"], "--gpus with --workers 2 needs 2 GPUs; there are 1"),
        (["--init-from", "{tmp}/notes.pt"], "--init-from {tmp}/notes.pt: not a catalogan checkpoint"),
        (
            ["--data", "{tmp}/no-such-photos"],
            "--data {tmp}/no-such-photos: {tmp}/no-such-photos: no such folder",
        ),
        (["--data", "{tmp}"], "--data {tmp}: {tmp}: no category subfolders"),
        (
            ["--data", "fashion-mnist:{tmp}"],
            "--data fashion-mnist:{tmp}: {tmp}/train-images-idx3-ubyte.gz: file not",
        ),
    ],
    ids=[
        "warmup-without-init",
        "nothing-to-resume",
        "eval-on-a-folder",
        "more-workers-than-gpus",
        "init-junk",
        "data-missing",
        "data-without-categories",
        "data-without-idx-files",
    ],
)
def test_train_refuses_bad_arguments_as_usage_errors_before_anything_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str], message: str
) -> None:
    """A bad argument is bad input (exit 2, one line naming the option), not a failed run (exit 1)."""
    import torch

    # Given a machine with one GPU, an empty object store, and a file that is not a checkpoint
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)  # a local cluster: the data is checked before it starts
    (tmp_path / "notes.pt").write_text("not a checkpoint\n")
    out = (tmp_path / "objects").as_uri()
    # When `catalogan train` runs with a bad argument
    args = [arg.replace("{tmp}", str(tmp_path)) for arg in args]
    result = CliRunner().invoke(cli, ["train", "--preset", "tiny", "--steps", "2", "--out", out, *args])
    # Then it exits 2 with one line that names the option, and nothing was written or started
    assert result.exit_code == ExitCode.USAGE, result.output
    assert result.stderr.startswith("Error: " + message.replace("{tmp}", str(tmp_path))), result.stderr
    assert len(result.stderr.splitlines()) == 1 and "Traceback" not in result.output
    assert not (tmp_path / "objects").exists()
    import ray

    assert not ray.is_initialized()


def test_data_that_would_not_fit_in_memory_once_per_local_worker_is_refused_before_ray_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each local worker decodes its own copy of the data set: the size of all the copies is checked from the
    listing (no image decoded), before a local cluster starts."""
    import ray
    from PIL import Image

    from models.data import folder

    for category in ("bags", "shoes"):
        (tmp_path / "photos" / category).mkdir(parents=True)
        for i in range(3):
            Image.new("L", (8, 8)).save(tmp_path / "photos" / category / f"{i}.png")
    # Given a machine of 1 KiB: the tiny preset's 6 images at 1×8×8 take 384 bytes, within half of it for one
    # worker, but 768 bytes for two
    monkeypatch.setattr(folder, "physical_memory_bytes", lambda: 1024)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    out = (tmp_path / "objects").as_uri()
    args = ["train", "--preset", "tiny", "--steps", "2", "--out", out, "--data", str(tmp_path / "photos")]
    result = CliRunner().invoke(cli, [*args, "--workers", "2"])
    assert result.exit_code == ExitCode.USAGE, result.output
    assert result.stderr.startswith(
        f"Error: --data {tmp_path / 'photos'}: 6 images at 1×8×8 take 384 bytes per worker, 768 bytes for 2 workers: "
        "over 50% of this machine's 1.0 KiB of memory (train on fewer images, a smaller preset or fewer workers"
    ), result.stderr
    assert len(result.stderr.splitlines()) == 1 and not ray.is_initialized()
    assert not (tmp_path / "objects").exists()


def test_on_a_remote_cluster_data_this_host_cannot_read_is_refused_before_training_when_it_builds_the_index(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With --ray-address the ranks read the data, but this host builds the memorization index after the last
    step: data it cannot read is refused before Ray is contacted (the address here answers nothing), not after
    hours of training. With --no-memorization-index only the ranks need it."""
    import ray

    out = (tmp_path / "objects").as_uri()
    missing = tmp_path / "only-on-the-gpu-nodes"
    args = ["train", "--preset", "tiny", "--steps", "2", "--out", out, "--data", str(missing)]
    result = CliRunner().invoke(cli, [*args, "--ray-address", "127.0.0.1:9"])
    assert result.exit_code == ExitCode.USAGE, result.output
    assert result.stderr.startswith(f"Error: --data {missing}: {missing}: no such folder"), result.stderr
    assert "builds the memorization index" in result.stderr and "--no-memorization-index" in result.stderr
    assert len(result.stderr.splitlines()) == 1 and not ray.is_initialized()
    assert not (tmp_path / "objects").exists()


def test_only_bad_arguments_of_a_run_exit_2() -> None:
    from models.errors import TrainingError, TrainingInputError

    assert exit_code_for(TrainingInputError("--steps must be at least 1")) == ExitCode.USAGE
    assert (
        exit_code_for(TrainingError("training failed: rank 0: RuntimeError: gloo timed out"))
        == ExitCode.ERROR
    )


def test_every_command_has_an_example_in_its_help() -> None:
    runner = CliRunner()
    for args in (
        ["train"],
        ["models", "list"],
        ["models", "show"],
        ["models", "promote"],
        ["models", "retire"],
        ["models", "restore"],
    ):
        result = runner.invoke(cli, [*args, "--help"])
        assert result.exit_code == 0 and "Example:" in result.output, args


def test_registry_commands_do_not_import_torch() -> None:
    # `catalogan models list` must start fast: the registry side of models/ imports no torch or Ray
    import subprocess
    import sys

    code = (
        "import sys, models.cli, models.cli_models, models.default_model; "
        "print(sorted({'torch', 'ray'} & set(sys.modules)))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_register_default_puts_the_shipped_model_in_the_configured_registry_once(
    sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given an empty registry and a local object store, configured as a deployment would be
    monkeypatch.setenv("CATALOGAN_DATABASE_URL", sqlite_url)
    monkeypatch.setenv("CATALOGAN_STORAGE_URL", (tmp_path / "objects").as_uri())
    runner = CliRunner()
    # When the operator registers the shipped model (generator only) twice
    first = runner.invoke(cli, ["models", "register-default", "--no-index", "--json"])
    second = runner.invoke(cli, ["models", "register-default", "--no-index", "--json"])
    # Then one production version exists, its checkpoint is in the store with the recorded sha256
    assert first.exit_code == 0 and second.exit_code == 0, first.output + second.output
    row, again = json.loads(first.output), json.loads(second.output)
    assert row["ref"] == again["ref"] == "fashion-cgan@1" and row["status"] == "production"
    listed = json.loads(runner.invoke(cli, ["models", "list", "--json"]).output)
    assert [version["ref"] for version in listed] == ["fashion-cgan@1"]
    stored = list((tmp_path / "objects").rglob("*"))
    checkpoints = [path for path in stored if path.is_file()]
    assert checkpoints and any(
        hashlib.sha256(path.read_bytes()).hexdigest() == row["checkpoint_sha256"] for path in checkpoints
    )
