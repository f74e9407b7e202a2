"""`catalogan worker` checks its settings and options before it takes work: a bad one exits at start.

Before, the settings a chunk needs were read on the first task: a misconfigured worker said ready, answered
pings, and failed (and dropped) every task. `--gpus` named GPUs that were not there, and a malformed
CATALOGAN_WORKER_CONCURRENCY or CATALOGAN_QUEUES was called a bad option (exit 2).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from db.cli_support import CATALOGAN_ARGV, ExitCode
from db.errors import ConfigError
from workers import cli as worker_cli
from workers.cli import ChildSpec


@pytest.fixture
def nothing_starts(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[Any]:
    """What the worker command started (Celery in this process, or a supervisor); empty when it refused.

    The CATALOGAN_* variables of this process are removed and the data folder is `tmp_path`."""
    import celery

    for name in [name for name in os.environ if name.startswith("CATALOGAN_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("CATALOGAN_DATA_DIR", str(tmp_path))
    # The command sets CATALOGAN_DEVICE for its children in os.environ: undone after the test (set here so
    # that monkeypatch restores it; the default, auto, changes nothing)
    monkeypatch.setenv("CATALOGAN_DEVICE", "auto")
    started: list[Any] = []
    monkeypatch.setattr(celery.Celery, "worker_main", lambda _self, argv=None: started.append(argv))
    monkeypatch.setattr(worker_cli, "supervise", lambda specs: started.append(specs) or 0)
    return started


def _worker(*args: str) -> Result:
    return CliRunner().invoke(worker_cli.worker, list(args))


def _one_error_line(result: Result) -> str:
    (line,) = result.output.strip().splitlines()
    assert line.startswith("Error: ")
    return line


@pytest.mark.parametrize("value", ["xyz", "0,x", "-1", ""])
def test_a_malformed_gpus_value_is_a_usage_error_naming_the_option_and_its_rule(
    nothing_starts: list[Any], value: str
) -> None:
    """Given `--gpus xyz`, When the worker starts, Then exit 2 naming '--gpus' and the values it takes (before:
    `Error: invalid literal for int() with base 10: 'xyz'`), and nothing starts."""
    result = _worker("--gpus", value)
    assert result.exit_code == ExitCode.USAGE, result.output
    assert (
        f"Invalid value for '--gpus': {value!r}: must be auto, none, pinned or comma-separated"
        in result.output
    )
    assert nothing_starts == []


def test_a_gpu_that_is_not_visible_is_a_usage_error_and_nothing_starts(
    nothing_starts: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Given a machine without a GPU, When `--gpus 7`, Then exit 2 naming '--gpus' (before: "gpu7 ready", taking
    work it could never run); and with two GPUs, `--gpus 1,2` names GPU 2 while `--gpus 0,1` starts."""
    monkeypatch.setattr(worker_cli, "_visible_gpus", lambda: 0)
    result = _worker("--gpus", "7")
    assert result.exit_code == ExitCode.USAGE, result.output
    assert "Invalid value for '--gpus': '7': GPU 7: no GPU is visible" in result.output
    monkeypatch.setattr(worker_cli, "_visible_gpus", lambda: 2)
    result = _worker("--gpus", "1,2")
    assert result.exit_code == ExitCode.USAGE, result.output
    assert "Invalid value for '--gpus': '1,2': GPU 2: only GPUs 0-1 are visible" in result.output
    assert nothing_starts == []
    assert _worker("--gpus", "0,1").exit_code == 0
    (specs,) = nothing_starts
    assert [spec.env["CUDA_VISIBLE_DEVICES"] for spec in specs] == ["0", "1"]


def test_catalogan_device_naming_a_gpu_that_is_not_there_exits_6_naming_the_variable(
    nothing_starts: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Given CATALOGAN_DEVICE=cuda:0 on a machine without a GPU, When the worker starts without --gpus, Then one
    line naming the variable, exit 6 (docs/configuration.md), and no child starts (before: "gpu0 ready")."""
    monkeypatch.setattr(worker_cli, "_visible_gpus", lambda: 0)
    monkeypatch.setenv("CATALOGAN_DEVICE", "cuda:0")
    result = _worker()
    assert result.exit_code == ExitCode.CONFIG, result.output
    assert (
        _one_error_line(result)
        == "Error: CATALOGAN_DEVICE=cuda:0: GPU 0: no GPU is visible (use auto or cpu)"
    )
    assert nothing_starts == []


@pytest.mark.parametrize(
    ("variable", "value", "option"),
    [
        ("CATALOGAN_WORKER_CONCURRENCY", "abc", "--concurrency"),
        ("CATALOGAN_WORKER_CONCURRENCY", "0", "--concurrency"),
        ("CATALOGAN_PROCESSES_PER_GPU", "0", "--processes-per-gpu"),
        ("CATALOGAN_QUEUES", "nosuch", "--queues"),
        ("CATALOGAN_QUEUES", ",", "--queues"),
    ],
)
def test_a_malformed_variable_exits_6_naming_it_and_the_same_option_exits_2(
    nothing_starts: list[Any], monkeypatch: pytest.MonkeyPatch, variable: str, value: str, option: str
) -> None:
    """Given a malformed CATALOGAN_* variable, When the worker starts, Then one line naming the variable, exit 6
    (before: "Invalid value for '--concurrency'", exit 2); the same value typed as the option stays exit 2."""
    monkeypatch.setenv(variable, value)
    result = _worker("--gpus", "none")
    assert result.exit_code == ExitCode.CONFIG, result.output
    assert _one_error_line(result).startswith(f"Error: {variable}: ")
    monkeypatch.delenv(variable)
    result = _worker("--gpus", "none", option, value)
    assert result.exit_code == ExitCode.USAGE, result.output
    assert "Invalid value for" in result.output and option in result.output
    assert nothing_starts == []


def test_an_impossible_inference_backend_stops_the_worker_before_celery_starts(
    nothing_starts: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Given CATALOGAN_INFERENCE_BACKEND=bogus, When a one-process worker starts, Then one line naming the
    variable, exit 6, and Celery never started (before: ready, then every task failed building its context)."""
    monkeypatch.setenv("CATALOGAN_INFERENCE_BACKEND", "bogus")
    result = _worker("--gpus", "none", "--concurrency", "1")
    assert result.exit_code == ExitCode.CONFIG, result.output
    assert _one_error_line(result).startswith("Error: CATALOGAN_INFERENCE_BACKEND: inference backend 'bogus'")
    assert nothing_starts == []


def test_a_pinned_child_without_its_gpu_exits_6_before_celery_starts(
    nothing_starts: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Given a child pinned to CUDA on a machine where torch sees no GPU, When it starts, Then exit 6 naming
    CATALOGAN_DEVICE before Celery starts, so its supervisor stops instead of running a worker that fails."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    monkeypatch.setenv("CATALOGAN_DEVICE", "cuda")
    result = _worker("--gpus", "pinned")
    assert result.exit_code == ExitCode.CONFIG, result.output
    assert _one_error_line(result).startswith(
        "Error: CATALOGAN_DEVICE: device 'cuda': no CUDA device is visible"
    )
    assert nothing_starts == []


def test_read_worker_config_refuses_a_bad_store_url_without_opening_anything(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Given CATALOGAN_STORAGE_URL=ftp://x, When the worker's settings are read, Then a ConfigError names the
    variable (the CLI's exit 6) and no data folder was created."""
    from workers.context import read_worker_config

    monkeypatch.setenv("CATALOGAN_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("CATALOGAN_STORAGE_URL", "ftp://x")
    with pytest.raises(ConfigError, match=r"^CATALOGAN_STORAGE_URL: "):
        read_worker_config()
    assert not (tmp_path / "data").exists()


def test_a_supervised_cpu_worker_with_a_bad_store_url_exits_6_at_once(tmp_path: Path) -> None:
    """Given CATALOGAN_STORAGE_URL=ftp://x, When `catalogan worker --gpus none -c 2` runs, Then it exits 6 within
    30 s with one line naming the variable (before: two workers said ready and failed every task)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CATALOGAN_")}
    env |= {"CATALOGAN_DATA_DIR": str(tmp_path), "CATALOGAN_STORAGE_URL": "ftp://x"}
    command = [*CATALOGAN_ARGV, "worker", "--gpus", "none", "-c", "2"]
    try:
        result = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"the worker was still running after 30 s: {exc.stderr!r}")
    assert result.returncode == ExitCode.CONFIG, result.stderr
    assert result.stderr.strip().splitlines() == [
        "Error: CATALOGAN_STORAGE_URL: must be s3://bucket[/prefix], file:///absolute/path or memory:// (or "
        "empty for a folder in the data folder) (see docs/configuration.md)"
    ]


class _RefusingChild:
    """A child process that exits 6 (a refused setting) as soon as it is polled."""

    starts = 0

    def __init__(self, *_args: object, **_kwargs: object) -> None:
        type(self).starts += 1
        if type(self).starts > 3:
            raise AssertionError("the supervisor restarted a child that refused its settings")
        self.pid = 4242

    def poll(self) -> int:
        return ExitCode.CONFIG

    def wait(self) -> int:
        return ExitCode.CONFIG

    def send_signal(self, _signum: int) -> None:
        pass


def test_a_child_refusing_its_settings_after_a_slow_start_stops_the_supervisor(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Given a child that exits 6 after more than CHILD_HEALTHY_AFTER_SECONDS (torch imported slowly on a busy
    machine), When the supervisor sees it, Then it stops with exit 6 instead of restarting it in a loop."""
    monkeypatch.setattr(worker_cli, "CHILD_HEALTHY_AFTER_SECONDS", 0.0)
    monkeypatch.setattr(worker_cli.subprocess, "Popen", _RefusingChild)
    monkeypatch.setattr(worker_cli.signal, "signal", lambda *_args: None)  # keep pytest's handlers
    assert worker_cli.supervise([ChildSpec(["true"], {})]) == ExitCode.CONFIG
    assert _RefusingChild.starts == 1
