"""Training runs as the object store records them: the run record, its history, and what a run's status is.

Every run lives in `models/<name>/<run>/` (see docs/training.md, "What a run records"). Two writers, one
object each: the driver (`catalogan train`) owns `run.json`, the run record; rank 0 owns `history.jsonl`,
the progress and quality lines. Everything here reads the store only, so `catalogan train ls` and
`catalogan train show --follow` work from any shell on any host that can reach the store. No torch here.

A record says `running` while its driver lives. A driver killed without a chance to write (SIGKILL, a lost
host) leaves `running` behind; such a run is *shown* as failed when its driver process is gone (same host) or
its heartbeat is older than `STALE_AFTER_SECONDS` (any host).
"""

from __future__ import annotations

import datetime as dt
import enum
import json
import os
import shlex
import socket
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from db.errors import NotFoundError, ObjectNotFoundError
from db.storage.base import ObjectStore

RUN_RECORD = "run.json"
HISTORY = "history.jsonl"
LATEST = "latest.json"
BEST = "best.json"
SAMPLES_PNG = "samples.png"
LOSS_PNG = "loss.png"
QUALITY_PNG = "quality.png"
HEARTBEAT_SECONDS = 30.0  # the driver rewrites run.json at least this often while it trains
STALE_AFTER_SECONDS = 600.0  # a `running` record not rewritten for this long is shown as failed
FOLLOW_POLL_SECONDS = 1.0


class RunStatus(enum.StrEnum):
    """Where a run stands."""

    RUNNING = "running"
    FINISHED = "finished"
    FAILED = "failed"
    STOPPED = "stopped"


def run_prefix(name: str, run: str) -> str:
    """Object-store folder of one run: `models/<name>/<run>`."""
    return f"models/{name}/{run}"


def now_iso() -> str:
    """The current UTC time, ISO 8601."""
    return dt.datetime.now(dt.UTC).isoformat()


def resume_command(settings: Mapping[str, Any]) -> str:
    """The `catalogan train … --resume` command that continues the run a TrainRequest-like dict describes.

    Optional keys `register`, `evaluate` and `memorization_index` (the driver's options) are carried over too.
    """
    words = [
        "catalogan",
        "train",
        "--preset",
        str(settings["preset"]),
        "--data",
        str(settings["data"]),
        "--workers",
        str(settings["workers"]),
        "--steps",
        str(settings["steps"]),
        "--name",
        str(settings["name"]),
        "--run",
        str(settings["run"]),
        "--checkpoint-every",
        str(settings["checkpoint_every"]),
        "--log-every",
        str(settings.get("log_every", 50)),
        "--out",
        str(settings["out_url"]),
    ]
    if settings.get("use_gpu"):
        words.append("--gpus")
    if settings.get("seed") is not None:
        words += ["--seed", str(settings["seed"])]
    if settings.get("eval_every"):
        words += [
            "--eval-every",
            str(settings["eval_every"]),
            "--eval-samples",
            str(settings["eval_samples"]),
        ]
    # What happens after the last step, when the run said otherwise than the defaults.
    for key, flag in (("register", "--no-register"), ("memorization_index", "--no-memorization-index")):
        if settings.get(key) is False:
            words.append(flag)
    if settings.get("evaluate"):
        words.append("--evaluate")
    words.append("--resume")
    return shlex.join(words)


def read_json(store: ObjectStore, key: str) -> dict[str, Any] | None:
    """The JSON object under `key`, or None when there is none (or it is not an object)."""
    try:
        value = json.loads(store.get(key))
    except ObjectNotFoundError:
        return None
    return value if isinstance(value, dict) else None


def write_json(store: ObjectStore, key: str, value: Mapping[str, Any]) -> None:
    """Write a JSON object under `key`."""
    store.put(key, json.dumps(value, indent=2).encode(), content_type="application/json")


def read_run_record(store: ObjectStore, name: str, run: str) -> dict[str, Any] | None:
    """The run's `run.json`, or None."""
    return read_json(store, f"{run_prefix(name, run)}/{RUN_RECORD}")


def write_run_record(store: ObjectStore, record: Mapping[str, Any]) -> None:
    """Write `run.json` for the record's name and run."""
    write_json(store, f"{run_prefix(record['name'], record['run'])}/{RUN_RECORD}", record)


def new_run_record(settings: Mapping[str, Any]) -> dict[str, Any]:
    """A `running` record for a TrainRequest-like dict, stamped with this driver's host and pid."""
    started = now_iso()
    return {
        "name": settings["name"],
        "run": settings["run"],
        "preset": settings["preset"],
        "data": settings["data"],
        "steps": settings["steps"],
        "workers": settings["workers"],
        "gpus": bool(settings.get("use_gpu")),
        "eval_every": settings.get("eval_every", 0),
        # the recipe a resume keeps (models.training.resumed_recipe)
        "init_from": settings.get("init_from", ""),
        "init_key": settings.get("init_key", ""),
        "init_sha256": settings.get("init_sha256", ""),
        "d_warmup_steps": settings.get("d_warmup_steps", 0),
        "batch_size": settings.get("batch_size", 0),
        "precision": settings.get("precision", "fp32"),
        "status": RunStatus.RUNNING.value,
        "step": 0,
        "started_at": started,
        "updated_at": started,
        "finished_at": None,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "error": None,
        "resume_command": resume_command(settings),
        "last": None,
        "registered": None,
    }


def parse_history(data: bytes) -> list[dict[str, Any]]:
    """`history.jsonl` bytes as a list of objects (lines that are not objects with a `step` are skipped)."""
    lines = []
    for line in data.splitlines():
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict) and isinstance(value.get("step"), int):
            lines.append(value)
    return lines


def history_bytes(lines: list[dict[str, Any]]) -> bytes:
    """`history.jsonl` bytes of a list of objects."""
    return b"".join(json.dumps(line, separators=(", ", ": ")).encode() + b"\n" for line in lines)


def read_history(store: ObjectStore, name: str, run: str) -> list[dict[str, Any]]:
    """The run's history lines ([] when none were written yet)."""
    try:
        return parse_history(store.get(f"{run_prefix(name, run)}/{HISTORY}"))
    except ObjectNotFoundError:
        return []


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _age_seconds(stamp: str | None, now: dt.datetime) -> float | None:
    if not stamp:
        return None
    try:
        return (now - dt.datetime.fromisoformat(stamp)).total_seconds()
    except ValueError:
        return None


@dataclass
class RunView:
    """One run as `train ls/show` shows it: the record, with the status a reader should believe."""

    name: str
    run: str
    status: RunStatus
    step: int
    steps: int | None
    updated_at: str | None
    reason: str | None = None  # why a `running` record is shown as failed, or the recorded error
    resume_command: str | None = None
    last: dict[str, Any] | None = None  # the last history line
    best: dict[str, Any] | None = None  # best.json
    files: dict[str, str] = field(default_factory=dict)  # samples / loss / quality / history / generator URIs
    record: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly dict."""
        return {
            "name": self.name,
            "run": self.run,
            "status": self.status.value,
            "step": self.step,
            "steps": self.steps,
            "updated_at": self.updated_at,
            "reason": self.reason,
            "resume_command": self.resume_command,
            "last": self.last,
            "best": self.best,
            "files": self.files,
        }


def effective_status(
    record: Mapping[str, Any], *, now: dt.datetime | None = None, host: str | None = None
) -> tuple[RunStatus, str | None]:
    """The status to show for a record, and why when it is not what the record says."""
    status = RunStatus(record.get("status", RunStatus.RUNNING.value))
    if status is not RunStatus.RUNNING:
        return status, record.get("error")
    pid = record.get("pid")
    if (
        record.get("host") == (host or socket.gethostname())
        and isinstance(pid, int)
        and not _process_alive(pid)
    ):
        return RunStatus.FAILED, f"its training process (pid {pid} on {record['host']}) is gone"
    age = _age_seconds(record.get("updated_at"), now or dt.datetime.now(dt.UTC))
    if age is not None and age > STALE_AFTER_SECONDS:
        return RunStatus.FAILED, f"no heartbeat for {age / 60:.0f} min (its driver stopped without a word)"
    return RunStatus.RUNNING, None


def view_run(store: ObjectStore, name: str, run: str) -> RunView:
    """One run's view; `NotFoundError` when the store holds nothing of it."""
    prefix = run_prefix(name, run)
    record = read_run_record(store, name, run)
    latest = read_json(store, f"{prefix}/{LATEST}")
    if record is None and latest is None:
        raise NotFoundError(f"no training run {name}/{run} under {store.uri('models/' + name)}")
    history = read_history(store, name, run)
    if record is not None:
        status, reason = effective_status(record)
        steps = record.get("steps")
        step = int(record.get("step") or 0)
        command = record.get("resume_command")
    else:  # a run written before run records existed: only its checkpoints tell
        assert latest is not None
        status = RunStatus.FINISHED if latest.get("done") else RunStatus.FAILED
        reason, steps, step, command = (None if latest.get("done") else "no run record"), None, 0, None
    if history:
        step = max(step, int(history[-1]["step"]))
    if latest is not None:
        step = max(step, int(latest.get("step", 0)))
    keys = {info.key.rpartition("/")[2] for info in store.list(prefix + "/")}
    files = {
        label: store.uri(f"{prefix}/{key}")
        for label, key in (
            ("samples", SAMPLES_PNG),
            ("loss_curve", LOSS_PNG),
            ("quality_curve", QUALITY_PNG),
            ("history", HISTORY),
            ("generator", "generator.pt"),
            ("best_generator", "generator-best.pt"),
        )
        if key in keys
    }
    return RunView(
        name=name,
        run=run,
        status=status,
        step=step,
        steps=steps if isinstance(steps, int) else None,
        updated_at=(record or latest or {}).get("updated_at"),
        reason=reason,
        resume_command=command if status in (RunStatus.FAILED, RunStatus.STOPPED) else None,
        last=history[-1] if history else (record or {}).get("last"),
        best=read_json(store, f"{prefix}/{BEST}"),
        files=files,
        record=record or {},
    )


def list_runs(store: ObjectStore, name: str | None = None) -> list[RunView]:
    """Every run under `models/` (of one model name, if given), oldest first."""
    found: set[tuple[str, str]] = set()
    for info in store.list(f"models/{name}/" if name else "models/"):
        parts = info.key.split("/")
        if len(parts) == 4 and parts[3] in (RUN_RECORD, LATEST):
            found.add((parts[1], parts[2]))
    views = [view_run(store, model, run) for model, run in found]
    return sorted(views, key=lambda view: (view.record.get("started_at") or view.updated_at or "", view.run))


def parse_run_ref(ref: str, store: ObjectStore) -> tuple[str, str]:
    """`NAME/RUN`, or a bare `RUN` when exactly one model name has a run of that id."""
    if "/" in ref:
        name, _, run = ref.partition("/")
        if name and run and "/" not in run:
            return name, run
        raise ValueError(f"RUN {ref!r}: expected NAME/RUN or RUN")
    names = sorted({view.name for view in list_runs(store) if view.run == ref})
    if not names:
        raise NotFoundError(f"no training run {ref!r} under {store.uri('models')}")
    if len(names) > 1:
        raise ValueError(f"RUN {ref!r} exists for {', '.join(names)}: pass NAME/RUN")
    return names[0], ref


def follow_history(
    store: ObjectStore,
    name: str,
    run: str,
    *,
    done: Callable[[], bool],
    poll_seconds: float = FOLLOW_POLL_SECONDS,
    sleep: Callable[[float], None] = time.sleep,
    after_step: int = -1,
) -> Iterator[dict[str, Any]]:
    """Yield each history line past `after_step` once, in order, until `done()` and no new line is left."""
    while True:
        finished = done()  # read before the history, so the last lines written before `done` are not lost
        for line in read_history(store, name, run):
            if line["step"] > after_step:
                after_step = line["step"]
                yield line
        if finished:
            return
        sleep(poll_seconds)
