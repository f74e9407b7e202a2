"""Run records in the object store (`models/runs.py`) and the driver's checks before training (no Ray here)."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from db.errors import NotFoundError
from db.storage import MemoryStore, open_store
from models.cli import train
from models.errors import TrainingError
from models.runs import (
    RunStatus,
    effective_status,
    follow_history,
    history_bytes,
    list_runs,
    new_run_record,
    now_iso,
    parse_run_ref,
    resume_command,
    view_run,
    write_run_record,
)
from models.training import TrainRequest
from models.training_run import check_gpus, refuse_live_run


def _request(**extra: object) -> TrainRequest:
    return TrainRequest.from_dict(
        {
            "preset": "tiny",
            "data": "fashion-mnist",
            "steps": 100,
            "out_url": "memory://runs",
            "name": "tiny",
            "run": "r1",
            "workers": 2,
            "checkpoint_every": 20,
            "log_every": 10,
            "eval_every": 50,
            "eval_samples": 200,
            **extra,
        }
    )


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_a_running_record_whose_driver_is_gone_or_silent_is_shown_as_failed() -> None:
    # Given records that say `running`
    alive = new_run_record(_request().to_dict())
    dead = {**alive, "pid": _dead_pid()}
    stale = {**alive, "host": "elsewhere", "updated_at": "2020-01-01T00:00:00+00:00"}
    quiet_elsewhere = {**alive, "host": "elsewhere", "pid": _dead_pid()}
    # Then a live driver's run is running, a dead driver's (same host) or a silent one's is failed, with why
    assert effective_status(alive) == (RunStatus.RUNNING, None)
    status, reason = effective_status(dead)
    assert status is RunStatus.FAILED and f"pid {dead['pid']}" in str(reason) and "gone" in str(reason)
    status, reason = effective_status(stale)
    assert status is RunStatus.FAILED and "no heartbeat" in str(reason)
    # And a dead pid on another host proves nothing: its fresh heartbeat keeps it running
    assert effective_status(quiet_elsewhere)[0] is RunStatus.RUNNING
    later = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
    assert effective_status(quiet_elsewhere, now=later)[0] is RunStatus.FAILED
    # And recorded outcomes are shown as recorded
    assert effective_status({**dead, "status": "stopped"})[0] is RunStatus.STOPPED


def test_the_resume_command_parses_back_into_the_same_run() -> None:
    # Given a run's resume command
    request = _request(seed=3, out_url="s3://bucket/prefix with space")
    driver = {"register": True, "evaluate": True, "memorization_index": False}
    words = shlex.split(resume_command({**request.to_dict(), **driver}))
    # When the train command parses it (without running it)
    assert words[:2] == ["catalogan", "train"]
    ctx = train.make_context("train", words[2:])
    # Then every option that decides the run's bytes is the same, and it resumes
    params = ctx.params
    assert params["resume"] is True
    for option, value in (
        ("preset", "tiny"),
        ("data_spec", "fashion-mnist"),
        ("workers", 2),
        ("steps", 100),
        ("name", "tiny"),
        ("run_id", "r1"),
        ("checkpoint_every", 20),
        ("log_every", 10),
        ("seed", 3),
        ("eval_every", 50),
        ("eval_samples", 200),
        ("out_url", "s3://bucket/prefix with space"),
        ("register", True),
        ("evaluate", True),
        ("memorization_index", False),
    ):
        assert params[option] == value, option


def _write_run(store: MemoryStore, run: str, status: str, steps: list[int], **record: object) -> None:
    base = new_run_record(_request(run=run).to_dict())
    write_run_record(store, {**base, "status": status, "step": steps[-1], **record})
    lines = [{"step": s, "d_loss": 1.0, "g_loss": 0.5} for s in steps]
    store.put(f"models/tiny/{run}/history.jsonl", history_bytes(lines))


def test_ls_and_show_read_runs_from_the_store() -> None:
    # Given a finished run with pictures, a stopped one, and an old run with only checkpoints
    store = MemoryStore()
    _write_run(store, "done", "finished", [10, 20], registered="tiny@1")
    store.put("models/tiny/done/samples.png", b"\x89PNG")
    store.put("models/tiny/done/latest.json", json.dumps({"step": 20, "done": True}).encode())
    _write_run(store, "halted", "stopped", [10], error="stopped by the operator")
    store.put("models/other/legacy/latest.json", json.dumps({"step": 5, "done": False}).encode())
    # When they are listed
    views = {f"{v.name}/{v.run}": v for v in list_runs(store)}
    # Then each has its status, step, last line and files; only the unfinished ones offer a resume command
    assert {key: v.status.value for key, v in views.items()} == {
        "tiny/done": "finished",
        "tiny/halted": "stopped",
        "other/legacy": "failed",
    }
    done = views["tiny/done"]
    assert done.step == 20 and done.last == {"step": 20, "d_loss": 1.0, "g_loss": 0.5}
    assert done.files["samples"].endswith("models/tiny/done/samples.png") and done.resume_command is None
    assert (
        views["tiny/halted"].resume_command is not None
        and views["tiny/halted"].reason == "stopped by the operator"
    )
    assert [v.run for v in list_runs(store, "tiny")] == ["done", "halted"]
    # And references resolve by NAME/RUN or an unambiguous RUN, and say so otherwise
    assert parse_run_ref("halted", store) == ("tiny", "halted")
    with pytest.raises(NotFoundError):
        parse_run_ref("nope", store)
    with pytest.raises(NotFoundError):
        view_run(store, "tiny", "nope")


def test_train_show_and_ls_through_the_cli(tmp_path: object) -> None:
    # Given a local store holding a failed run
    url = f"file://{tmp_path}/objects"
    store = open_store(url)
    base = new_run_record(_request(run="broken", out_url=url).to_dict())
    write_run_record(store, {**base, "pid": _dead_pid(), "step": 30})
    runner = CliRunner()
    # When an operator lists and shows it
    listed = runner.invoke(train, ["ls", "--out", url])
    shown = runner.invoke(train, ["show", "tiny/broken", "--out", url])
    # Then it is failed, and show prints the command that resumes it
    assert listed.exit_code == 0 and "tiny/broken  failed  30/100" in listed.output, listed.output
    assert shown.exit_code == 0, shown.output
    assert "failed (its training process" in shown.output
    assert re.search(
        r"^resume with\s+catalogan train --preset tiny .*--run broken .*--resume$", shown.output, re.M
    )
    # And an unknown run is a one-line error with the not-found exit code
    missing = runner.invoke(train, ["show", "tiny/nope", "--out", url])
    assert missing.exit_code == 3 and "no training run tiny/nope" in missing.output


def test_follow_history_yields_each_line_once_until_the_run_ends() -> None:
    # Given a history that grows between polls, and a run that ends after the third poll
    store = MemoryStore()
    writes = [[10], [10, 20], [10, 20, 30], [10, 20, 30, 40]]
    polls = iter(range(100))

    def sleep(_seconds: float) -> None:
        n = next(polls)
        if n + 1 < len(writes):
            store.put("models/tiny/r/history.jsonl", history_bytes([{"step": s} for s in writes[n + 1]]))

    store.put("models/tiny/r/history.jsonl", history_bytes([{"step": 10}]))
    finished = iter([False, False, False, True])
    # When it is followed from step 0
    seen = [
        line["step"] for line in follow_history(store, "tiny", "r", done=lambda: next(finished), sleep=sleep)
    ]
    # Then every line came once, in order, including those written just before the end
    assert seen == [10, 20, 30, 40]


def test_gpus_are_counted_before_any_worker_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a machine where torch sees one GPU
    import torch

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    # Then two GPU workers are refused in one line naming the counts, and one is fine
    with pytest.raises(
        TrainingError, match=r"--gpus with --workers 2 needs 2 GPUs; there are 1 on this machine"
    ):
        check_gpus(2, local=True)
    check_gpus(1, local=True)


def test_a_run_whose_driver_still_runs_cannot_be_resumed_twice() -> None:
    # Given a run whose record was written by this (live) process
    store = MemoryStore()
    request = _request(out_url="memory://x")
    write_run_record(store, new_run_record(request.to_dict()))
    # Then resuming it is refused, naming the live process
    with pytest.raises(TrainingError, match=f"is running \\(pid {os.getpid()}"):
        refuse_live_run(store, request)
    # And once that driver is gone, it may be resumed
    write_run_record(store, {**new_run_record(request.to_dict()), "pid": _dead_pid()})
    refuse_live_run(store, request)


def test_train_and_its_subcommands_document_an_example() -> None:
    # Given the help of `train`, `train ls` and `train show`
    runner = CliRunner()
    for args in ([], ["ls"], ["show"]):
        result = runner.invoke(train, [*args, "--help"])
        # Then each shows an example, and train names the options this issue added
        assert result.exit_code == 0 and "Example:" in result.output, args
    options = runner.invoke(train, ["--help"]).output
    for option in ("--eval-every", "--eval-samples", "--ray-address", "--verbose", "--json", "ls", "show"):
        assert option in options, option


def test_a_ray_train_failure_reads_as_the_worker_error_that_caused_it() -> None:
    # Given Ray Train's wrapper around two workers' errors
    from ray.train.v2.api.exceptions import WorkerGroupError

    from models.training import first_line

    failure = WorkerGroupError(
        "long text\nwith tracebacks",
        {1: RuntimeError("gloo timed out"), 0: TrainingError("checkpoint model config differs\n  details")},
    )
    # Then the one line names the lowest rank and its own first line, not Ray's wrapper
    assert first_line(failure) == "rank 0: TrainingError: checkpoint model config differs"


def test_a_bad_argument_only_a_rank_can_see_is_a_usage_error_naming_the_option() -> None:
    # Given Ray Train's wrapper around a rank's error about the data, or about the --init-from checkpoint
    from ray.train.v2.api.exceptions import WorkerGroupError

    from models.errors import DataError, TrainingInputError
    from models.training import run_failure

    request = _request(data="/nowhere/photos")
    data = WorkerGroupError("text", {0: DataError("/nowhere/photos: no such folder\n  details")})
    init = WorkerGroupError("text", {0: TrainingInputError("--init-from: the checkpoint's model differs")})
    crash = WorkerGroupError("text", {0: RuntimeError("gloo timed out")})
    # Then the first two are bad input naming the option (exit 2), and a crash stays a failed run (exit 1)
    assert isinstance(run_failure(request, data), TrainingInputError)
    assert str(run_failure(request, data)) == "--data /nowhere/photos: /nowhere/photos: no such folder"
    assert isinstance(run_failure(request, init), TrainingInputError)
    assert str(run_failure(request, init)) == "--init-from: the checkpoint's model differs"
    failed = run_failure(request, crash)
    assert type(failed) is TrainingError
    assert str(failed) == "training failed: rank 0: RuntimeError: gloo timed out"


def test_periodic_evaluation_is_refused_for_data_the_evaluator_does_not_know(tmp_path: object) -> None:
    # Given a run on a folder of photos asking for periodic evaluation
    from models.training import prepare_run

    request = _request(data=str(tmp_path), out_url="memory://x")
    # Then it is refused before Ray starts, naming the option and the data
    with pytest.raises(TrainingError, match=r"--eval-every needs --data fashion-mnist"):
        prepare_run(request, MemoryStore())
    assert prepare_run(_request(eval_every=0, data=str(tmp_path)), MemoryStore()).run == "r1"


def test_train_show_follow_tails_a_running_run_from_another_process(tmp_path: object) -> None:
    # Given a running run in a local store whose driver is this process, with one progress line so far
    url = f"file://{tmp_path}/objects"
    store = open_store(url)
    record = {**new_run_record(_request(run="live", out_url=url).to_dict()), "step": 10}
    write_run_record(store, record)
    lines = [{"step": 10, "d_loss": 1.0, "g_loss": 0.5}]
    store.put("models/tiny/live/history.jsonl", history_bytes(lines))
    # When an operator follows it from another shell, while the run writes two more lines and finishes
    follower = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "catalogan"),
            "train",
            "show",
            "tiny/live",
            "--follow",
            "--out",
            url,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert follower.stdout is not None
        first = follower.stdout.readline()  # the follower is up and has printed the first update
        for step in (20, 30):
            time.sleep(2.5)  # longer than the follower's 1 s poll, so each line is seen on its own
            lines.append({"step": step, "d_loss": 0.9, "g_loss": 0.6})
            store.put("models/tiny/live/history.jsonl", history_bytes(lines))
            write_run_record(store, {**record, "step": step, "updated_at": now_iso()})
        write_run_record(store, {**record, "step": 30, "status": "finished", "finished_at": now_iso()})
        rest, _ = follower.communicate(timeout=120)
    finally:
        follower.kill()
    output = first + rest
    # Then it printed every update once, in order, and stopped by itself on the finished status
    assert follower.returncode == 0, output
    steps = [int(match) for match in re.findall(r"^step (\d+)/100", output, re.M)]
    assert steps == [10, 20, 30], output
    assert re.search(r"^status\s+finished", output, re.M), output
