"""`catalogan train` as an operator runs it: real subprocesses on the session's Ray cluster, `tiny` on Fashion-MNIST.

Three driver runs share one cluster (connected with `--ray-address` / `RAY_ADDRESS`): one uninterrupted, one
killed with SIGKILL after its first checkpoint, and that one resumed with the command `train show` prints.
Two more are stopped the way an operator stops one (SIGTERM, SIGINT) and must be recorded as `stopped`.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from db.storage import LocalStore, open_store
from models.checkpoint import checkpoint_from_bytes

# Three driver processes in one fixture: 4-7 min on the shared 2-core box, more when it is loaded.
pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(1800)]

CATALOGAN = str(Path(sys.executable).with_name("catalogan"))
STEPS, LOG_EVERY, CHECKPOINT_EVERY, EVAL_EVERY = 120, 10, 20, 40
EVALUATED = list(range(EVAL_EVERY, STEPS + 1, EVAL_EVERY))  # 40, 80, 120
RUN_TIMEOUT_S = 600
# What Ray and Ray Train print on their own when nobody asks them to be quiet (seen in the run).
RAY_INTERNAL = re.compile(
    r"pid=\d+\)|core_worker|raylet|PlacementGroupCleaner|TrainController|Ray instance|ray\.init"
    r"|authentication|\.py:\d+ -- |\.cc:\d+"  # Ray's Python log format, and its C++ (glog) lines
)


@dataclass
class Runs:
    """The store and output of the module's runs."""

    store: LocalStore
    env: dict[str, str]
    straight_output: str
    killed_ls: str
    killed_show: dict[str, object]
    killed_show_text: str
    killed_step: int
    resumed_output: str


def _args(store_url: str, run: str) -> list[str]:
    return [
        CATALOGAN,
        "train",
        "--preset",
        "tiny",
        "--data",
        "fashion-mnist",
        "--workers",
        "2",
        "--steps",
        str(STEPS),
        "--log-every",
        str(LOG_EVERY),
        "--checkpoint-every",
        str(CHECKPOINT_EVERY),
        "--eval-every",
        str(EVAL_EVERY),
        "--eval-samples",
        "100",
        "--name",
        "tiny",
        "--run",
        run,
        "--out",
        store_url,
        "--no-memorization-index",
    ]


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CATALOGAN, *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )


def _free_cpus() -> float:
    import ray  # initialised in this process by the ray_cluster fixture

    return float(ray.available_resources().get("CPU", 0.0))


def _settled_free_cpus(seconds: float = 60.0) -> float:
    """The cluster's free CPUs once an earlier run's workers have given theirs back (at most `seconds`)."""
    import ray

    total, deadline = float(ray.cluster_resources().get("CPU", 0.0)), time.monotonic() + seconds
    while _free_cpus() < total and time.monotonic() < deadline:
        time.sleep(0.2)
    return _free_cpus()


def _wait_for_checkpoint_then_kill(
    process: subprocess.Popen[str], store: LocalStore, free_cpus: float
) -> int:
    """SIGKILL the driver once the run has a checkpoint; return the step of the newest one after it settles
    (its workers gone: the cluster has `free_cpus` free again, the CPUs free before the run started)."""
    deadline = time.monotonic() + RUN_TIMEOUT_S
    latest_key = "models/tiny/killed/latest.json"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(
                f"the run ended before it could be killed:\n{process.stdout.read() if process.stdout else ''}"
            )
        if store.exists(latest_key):
            break
        time.sleep(0.1)
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    # Ray ends the dead driver's workers: wait until the cluster has all its CPUs back (their actors are gone),
    # not for a quiet spell alone, which a loaded box could give between two steps of live workers.
    while _free_cpus() < free_cpus:
        assert time.monotonic() < deadline, "the killed run's Ray workers never gave their CPUs back"
        time.sleep(0.2)
    # Then until nothing in the run folder changes (a write in flight when the workers died has landed).
    folder = store.root / "models/tiny/killed"
    snapshot: list[tuple[str, int]] = []
    while True:
        time.sleep(2.0)
        current = sorted((path.name, path.stat().st_mtime_ns) for path in folder.iterdir())
        if current == snapshot:
            break
        snapshot = current
    return int(json.loads(store.get(latest_key))["step"])


@pytest.fixture(scope="module")
def runs(ray_cluster: str, fashion_train: object, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runs]:
    """An uninterrupted run, a run killed after its first checkpoint (and what ls/show said), then resumed."""
    root = tmp_path_factory.mktemp("train-cli")
    store = open_store((root / "objects").as_uri())
    assert isinstance(store, LocalStore)
    env = {
        **os.environ,
        "CATALOGAN_DATABASE_URL": f"sqlite:///{root / 'registry.db'}",
        "CATALOGAN_STORAGE_URL": store.url,
        "RAY_ADDRESS": ray_cluster,
        "COLUMNS": "80",
    }
    straight = subprocess.run(
        _args(store.url, "straight"),
        env=env,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )
    assert straight.returncode == 0, straight.stdout + straight.stderr
    free_cpus = _settled_free_cpus()
    killed = subprocess.Popen(
        _args(store.url, "killed"), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    killed_step = _wait_for_checkpoint_then_kill(killed, store, free_cpus)
    listed = _cli(env, "train", "ls", "--json")
    shown = _cli(env, "train", "show", "tiny/killed", "--json")
    shown_text = _cli(env, "train", "show", "killed")
    assert listed.returncode == shown.returncode == shown_text.returncode == 0, listed.stderr + shown.stderr
    command = json.loads(shown.stdout)["resume_command"]
    resumed = subprocess.run(
        [CATALOGAN, *shlex.split(command)[1:]],
        env=env,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    yield Runs(
        store=store,
        env=env,
        straight_output=straight.stdout + straight.stderr,
        killed_ls=listed.stdout,
        killed_show=json.loads(shown.stdout),
        killed_show_text=shown_text.stdout,
        killed_step=killed_step,
        resumed_output=resumed.stdout + resumed.stderr,
    )


def test_output_has_each_progress_update_once_and_no_ray_chatter(runs: Runs) -> None:
    # Given a 2-worker run driven without --verbose, its stdout and stderr captured
    lines = runs.straight_output.splitlines()
    # Then no line is one of Ray's or Ray Train's own
    assert [line for line in lines if RAY_INTERNAL.search(line)] == []
    # And each progress update (every --log-every steps, plus the evaluation steps) appears exactly once
    progress = [int(m.group(1)) for m in (re.match(rf"step (\d+)/{STEPS} \|", line) for line in lines) if m]
    assert progress == list(range(LOG_EVERY, STEPS + 1, LOG_EVERY))
    # And the final summary is a table with the gates and the next command
    assert "registered        tiny@1" in runs.straight_output
    assert re.search(r"min_conditional_accuracy\s+≥ 0.9\s+not measured\s+FAIL", runs.straight_output)
    assert "next: catalogan evaluate tiny@1 --record" in runs.straight_output


def test_periodic_evaluation_records_metrics_at_the_expected_steps(runs: Runs) -> None:
    # Given the uninterrupted run with --eval-every 40
    history = [json.loads(line) for line in runs.store.get("models/tiny/straight/history.jsonl").splitlines()]
    evaluated = [line for line in history if "fid_fm" in line]
    # Then FID_fm and per-category accuracy were recorded at steps 40, 80, 120, and nowhere else
    assert [line["step"] for line in evaluated] == EVALUATED
    for line in evaluated:
        assert line["fid_fm"] > 0 and 0.0 <= line["conditional_accuracy"] <= 1.0
        assert len(line["per_category_accuracy"]) == 10
    assert all({"step", "d_loss", "g_loss"} <= set(line) for line in history)
    # And the final checkpoint carries the same evaluations
    final = checkpoint_from_bytes(runs.store.get(f"models/tiny/straight/checkpoint-{STEPS:08d}.pt"))
    assert [e["step"] for e in final["evaluations"]] == EVALUATED
    assert [e["fid_fm"] for e in final["evaluations"]] == [line["fid_fm"] for line in evaluated]
    # And the best-so-far generator is the one of the lowest FID_fm, with the grid and curve beside it
    best = json.loads(runs.store.get("models/tiny/straight/best.json"))
    assert best["fid_fm"] == min(line["fid_fm"] for line in evaluated)
    assert runs.store.exists("models/tiny/straight/generator-best.pt")
    for picture in ("samples.png", "quality.png", "loss.png"):
        assert runs.store.get(f"models/tiny/straight/{picture}").startswith(b"\x89PNG")


def test_ls_and_show_tell_a_killed_run_from_a_finished_one(runs: Runs) -> None:
    # Given the run killed with SIGKILL after its first checkpoint, listed before it was resumed
    listed = {f"{view['name']}/{view['run']}": view for view in json.loads(runs.killed_ls)}
    # Then the finished run is finished and the killed one failed, at the step it reached
    assert listed["tiny/straight"]["status"] == "finished" and listed["tiny/straight"]["step"] == STEPS
    assert listed["tiny/killed"]["status"] == "failed"
    assert CHECKPOINT_EVERY <= int(listed["tiny/killed"]["step"]) < STEPS
    # And show says why and how to continue it
    assert runs.killed_show["status"] == "failed" and "is gone" in str(runs.killed_show["reason"])
    command = str(runs.killed_show["resume_command"])
    assert command.startswith("catalogan train --preset tiny")
    assert "--run killed" in command and command.endswith("--resume")
    assert "resume with" in runs.killed_show_text and "failed" in runs.killed_show_text


def test_resume_continues_to_the_same_final_checkpoint_bytes(runs: Runs) -> None:
    # Given the killed run resumed with the command `train show` printed
    assert 0 < runs.killed_step < STEPS
    # Then its final full checkpoint and its generator are byte for byte those of the uninterrupted run
    final = f"checkpoint-{STEPS:08d}.pt"
    assert runs.store.get(f"models/tiny/killed/{final}") == runs.store.get(f"models/tiny/straight/{final}")
    assert runs.store.get("models/tiny/killed/generator.pt") == runs.store.get(
        "models/tiny/straight/generator.pt"
    )
    # And its history is one history: no step twice, every update up to the end
    steps = [
        json.loads(line)["step"] for line in runs.store.get("models/tiny/killed/history.jsonl").splitlines()
    ]
    assert steps == list(range(LOG_EVERY, STEPS + 1, LOG_EVERY))
    # And the run is now listed as finished
    listed = json.loads(_cli(runs.env, "train", "ls", "--name", "tiny", "--json").stdout)
    assert {view["run"]: view["status"] for view in listed} == {"straight": "finished", "killed": "finished"}
    assert np.isfinite(float(listed[0]["last"]["d_loss"]))


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT], ids=["kill", "ctrl-c"])
def test_kill_or_ctrl_c_stops_the_run_recorded_as_stopped_and_resumable(
    ray_cluster: str, fashion_train: object, tmp_path: Path, stop: signal.Signals
) -> None:
    # Given a run in progress (Ray's init and Ray Train's fit install signal handlers of their own)
    store = open_store((tmp_path / "objects").as_uri())
    assert isinstance(store, LocalStore)
    env = {
        **os.environ,
        "CATALOGAN_DATABASE_URL": f"sqlite:///{tmp_path / 'registry.db'}",
        "RAY_ADDRESS": ray_cluster,
        "COLUMNS": "80",
    }
    args = _args(store.url, "halted")
    args[args.index("--steps") + 1] = "1000000"
    args[args.index("--workers") + 1] = "1"
    process = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while not store.exists("models/tiny/halted/latest.json"):
        assert process.poll() is None, process.stdout.read() if process.stdout else ""
        assert time.monotonic() < deadline, "no checkpoint in time"
        time.sleep(0.2)
    # When the operator sends `kill PID` (SIGTERM) or Ctrl-C (SIGINT) to the driver
    process.send_signal(stop)
    output = process.communicate(timeout=120)[0]
    # Then it says so and exits 130, and the run is recorded as stopped (not left `running` to be taken for a
    # crash later), with the command that resumes it
    assert process.returncode == 130, output
    assert "stopped; `catalogan train ls` shows the run" in output
    record = json.loads(store.get("models/tiny/halted/run.json"))
    assert (record["status"], record["error"]) == ("stopped", "stopped by the operator")
    shown = _cli(env, "train", "show", "tiny/halted", "--out", store.url, "--json")
    assert shown.returncode == 0, shown.stderr
    view = json.loads(shown.stdout)
    assert view["status"] == "stopped" and str(view["resume_command"]).endswith("--resume")


def test_data_that_cannot_be_read_is_a_usage_error_naming_data(ray_cluster: str, tmp_path: Path) -> None:
    """Only a rank reads the data: a --data folder that is not there fails there, and comes back as bad input
    (exit 2, one line naming --data), not as a failed run (exit 1) with a resume hint."""
    env = {**os.environ, "CATALOGAN_DATA_DIR": str(tmp_path / "data"), "RAY_ADDRESS": ray_cluster}
    missing = tmp_path / "no-such-photos"
    result = subprocess.run(
        [CATALOGAN, "train", "--preset", "tiny", "--data", str(missing), "--steps", "2", "--no-register"],
        env=env,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert errors == [
        f"Error: --data {missing}: {missing}: no such folder (use fashion-mnist[:/path], a folder, or s3://bucket/prefix)"
    ]
    assert "Traceback" not in result.stderr and "resume" not in result.stderr
