"""One training run end to end, as a plain function: `train_and_register(request, options, …)`.

`catalogan train` parses its options and calls it; so can a script. In order:

1. check the request against the store (`prepare_run`: nothing to resume, would overwrite, another preset, a
   live run), `--evaluate`'s data, the `--init-from` bytes, GPUs and data on a local cluster, and that the store
   takes a write (`probe_store`); only then copy the `--init-from` checkpoint into the run's folder, so bad
   input leaves nothing behind;
2. connect to Ray (`ray_address`: a running cluster, `auto` for the local node's; otherwise a new local
   cluster sized for the workers) with Ray's own chatter off unless `verbose`, and check there are GPUs for
   every worker when `use_gpu`;
3. write the run record (`run.json`, status `running`), then train on Ray Train while a follower thread
   reads rank 0's `history.jsonl`, hands each new line to `on_line` once, and keeps the record's heartbeat;
4. record `failed` (with the error) or `stopped` (Ctrl-C, SIGTERM) if training does not finish;
5. evaluate the final generator (`evaluate`), build the memorization index, register a candidate, record
   `finished` (or `failed`, without a resume command, when one of these fails), and return the summary with
   the promotion gates and the next command.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import signal
import tempfile
import threading
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from db.errors import StorageError, TransientStorageError
from db.storage import ObjectStore, open_store
from models.data.dataset import check_dataset
from models.errors import DataError, TrainingError, TrainingInputError
from models.registry import GateCheck, PromotionGates, register_version
from models.runs import (
    HEARTBEAT_SECONDS,
    HISTORY,
    RunStatus,
    effective_status,
    follow_history,
    new_run_record,
    now_iso,
    read_run_record,
    run_prefix,
    write_run_record,
)
from models.training import (
    RunResult,
    TrainRequest,
    check_evaluator_data,
    check_init_checkpoint,
    fit_with_ray,
    pin_init_checkpoint,
    prepare_run,
)

RAY_ENV_DEFAULTS = {
    # Ray's memory monitor kills workers when the *machine* is near full; on a shared box that is other
    # people's memory, so it is off unless the operator sets it.
    "RAY_memory_monitor_refresh_ms": "0",
}
FOLLOW_POLL_SECONDS = 0.5

LineFn = Callable[[dict[str, Any]], None]


INDEX_NEEDS_DATA_HERE = (
    " (this host builds the memorization index after the last step and cannot read it: pass data every node"
    " and this host can read, such as s3://bucket/prefix, or --no-memorization-index)"
)


@dataclass(frozen=True)
class TrainOptions:
    """What happens around the training itself."""

    evaluate: bool = False  # measure the final generator (`catalogan evaluate`'s metrics) before registering
    evaluate_samples: int = 1000  # generated images per category for that final evaluation
    register: bool = True
    memorization_index: bool = True
    ray_address: str | None = None  # a running cluster ("auto", "host:port", "ray://…"); None = start one
    ray_dir: Path | None = None  # Ray Train's own run folder (default: a temp folder)
    verbose: bool = False  # Ray's and Ray Train's own log lines on the terminal
    init_checkpoint: bytes | None = None  # the bytes of `request.init_from`, pinned into the run's folder


@dataclass
class TrainOutcome:
    """What a finished run produced: a summary, the gates, and the command to run next."""

    summary: dict[str, Any]
    metrics: dict[str, Any] = field(default_factory=dict)
    gates: list[GateCheck] = field(default_factory=list)
    next_command: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly dict."""
        return {
            **self.summary,
            "metrics": self.metrics,
            "gates": [gate.to_dict() for gate in self.gates],
            "next_command": self.next_command,
        }


def cpus_for(workers: int, *, local: bool) -> int:
    """CPU cores per rank when the request leaves it at 0: a local cluster splits this machine's usable cores
    over the workers (a single CPU worker on a 2-core box gets both); a cluster connected to gets 1 each, Ray's
    default, since its nodes' sizes are not this machine's (pass --cpus-per-worker there)."""
    if not local:
        return 1
    return max(1, len(os.sched_getaffinity(0)) // workers)


def start_ray(workers: int, *, address: str | None, verbose: bool, cpus_per_worker: int = 1) -> bool:
    """Connect to the cluster at `address`, or start a local one for `workers`; False if Ray was already up.

    A local cluster gets `cpus_per_worker` CPUs per worker plus one for Ray Train's controller (which idles),
    and finds the GPUs itself.
    `address="local"` is never guessed from a cluster already running on this node: that needs an address
    (`auto`), so a run is never sized for the wrong cluster by accident.
    """
    import ray

    if ray.is_initialized():
        return False
    for key, value in RAY_ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)
    # Without --verbose the actors' and workers' output stays in Ray's log files (it is where the
    # "PlacementGroupCleaner … Failed to query …" and core_worker.cc lines came from); progress comes from
    # the run's history.jsonl instead.
    quiet: dict[str, Any] = {
        "log_to_driver": verbose,
        "logging_level": logging.INFO if verbose else logging.ERROR,
    }
    # ray.init replaces the caller's SIGTERM handler with one that calls sys.exit, and Ray's core adds a C++
    # handler that prints a stack trace first: the run would die recorded as `running`. Keep the caller's
    # (the CLI's turns `kill PID` into the same stop as Ctrl-C, recorded as `stopped`).
    caller_sigterm = (
        signal.getsignal(signal.SIGTERM) if threading.current_thread() is threading.main_thread() else None
    )
    if address:
        ray.init(address=address, **quiet)
    else:
        ray.init(address="local", num_cpus=workers * cpus_per_worker + 1, include_dashboard=False, **quiet)
    if caller_sigterm is not None:
        signal.signal(signal.SIGTERM, caller_sigterm)
    if not verbose:
        # Ray Train's driver-side loggers ("ray.train", "ray.tune") print run tables and hints at INFO/WARNING.
        for name in ("ray", "ray.train", "ray.tune", "ray.data"):
            logging.getLogger(name).setLevel(logging.ERROR)
    return True


def check_gpus(workers: int, *, local: bool) -> None:
    """Refuse `--gpus` with more workers than GPUs, in one line, before any worker starts."""
    if local:
        import torch

        count = torch.cuda.device_count()
        where = "on this machine (torch.cuda.device_count())"
    else:
        import ray

        count = int(ray.cluster_resources().get("GPU", 0))
        where = "in the Ray cluster"
    if count < workers:
        raise TrainingInputError(
            f"--gpus with --workers {workers} needs {workers} GPUs; there are {count} {where}"
        )


class RunFollower(threading.Thread):
    """Reads rank 0's history while the driver waits on Ray Train: each new line to `on_line`, once.

    It also keeps `run.json` current (step, last line, heartbeat at least every `HEARTBEAT_SECONDS`).
    """

    def __init__(self, store: ObjectStore, record: dict[str, Any], on_line: LineFn, after_step: int):
        super().__init__(name="catalogan-run-follower", daemon=True)
        self.store, self.record, self.on_line, self.after_step = store, record, on_line, after_step
        self.finished = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            for line in follow_history(
                self.store,
                self.record["name"],
                self.record["run"],
                done=self.finished.is_set,
                poll_seconds=FOLLOW_POLL_SECONDS,
                sleep=self._sleep_and_beat,
                after_step=self.after_step,
            ):
                self.record.update(step=line["step"], last=line, updated_at=now_iso())
                write_run_record(self.store, self.record)
                self.on_line(line)
        except BaseException as exc:  # surfaced by the driver after join()
            self.error = exc

    def _sleep_and_beat(self, seconds: float) -> None:
        self.finished.wait(seconds)
        if _age(self.record.get("updated_at")) > HEARTBEAT_SECONDS:
            self.record["updated_at"] = now_iso()
            write_run_record(self.store, self.record)


def _age(stamp: str | None) -> float:
    import datetime as dt

    if not stamp:
        return float("inf")
    return (dt.datetime.now(dt.UTC) - dt.datetime.fromisoformat(stamp)).total_seconds()


def refuse_live_run(store: ObjectStore, request: TrainRequest) -> None:
    """A resume of a run whose driver still runs would train it twice: refuse it."""
    record = read_run_record(store, request.name, request.run)
    if record is None:
        return
    status, _ = effective_status(record)
    if status is RunStatus.RUNNING:
        raise TrainingError(
            f"run {request.name}/{request.run} is running (pid {record.get('pid')} on {record.get('host')}); "
            "stop it before resuming"
        )


def train_and_register(
    request: TrainRequest,
    options: TrainOptions = TrainOptions(),
    *,
    registry: Callable[[], sessionmaker[Session]] | None = None,
    on_line: LineFn = lambda _line: None,
    on_status: Callable[[str], None] = lambda _text: None,
) -> TrainOutcome:
    """Train `request` on Ray Train, record the run, evaluate, index and register it; see the module docstring.

    `registry` opens the model registry (only called when registering); `on_line` receives each
    `history.jsonl` line once, in step order; `on_status` one-line notes (connected, evaluating, …).
    Raises `TrainingError` (recorded as `failed`) or `KeyboardInterrupt` (recorded as `stopped`).
    """
    if options.evaluate:
        check_evaluator_data("--evaluate", request.data)
    store = open_store(request.out_url)
    request = prepare_run(request, store)
    refuse_live_run(store, request)
    pins_init = bool(request.init_from) and not request.resume
    if pins_init:
        if options.init_checkpoint is None:
            raise TrainingError(
                f"--init-from {request.init_from}: pass its bytes as TrainOptions.init_checkpoint"
            )
        check_init_checkpoint(request, options.init_checkpoint)
    import ray

    local = not options.ray_address and not ray.is_initialized()
    if request.use_gpu and local:
        check_gpus(request.workers, local=True)  # before a local cluster is started for nothing
    # A remote cluster's workers may see data (a path, credentials) this host does not; but when this host builds
    # the memorization index after the last step, it must read the data too: refuse now, not after the training.
    builds_index = options.register and options.memorization_index
    if local or builds_index:
        from models.config import get_preset

        model = get_preset(request.preset).model
        try:  # each local worker holds its own decoded copy; a remote cluster's workers are not on this host
            check_dataset(
                request.data,
                (model.channels, model.resolution, model.resolution),
                request.workers if local else 1,
            )
        except DataError as exc:
            why = "" if local else INDEX_NEEDS_DATA_HERE
            raise TrainingInputError(f"--data {request.data}: {exc}{why}") from exc
    probe_store(store, request)
    if pins_init:  # the first write of the run, once every check has passed
        assert options.init_checkpoint is not None
        request = pin_init_checkpoint(store, request, options.init_checkpoint)
    if not request.cpus_per_worker:
        request = dataclasses.replace(request, cpus_per_worker=cpus_for(request.workers, local=local))
    started_ray = start_ray(
        request.workers,
        address=options.ray_address,
        verbose=options.verbose,
        cpus_per_worker=request.cpus_per_worker,
    )
    try:
        if request.use_gpu and not local:
            check_gpus(request.workers, local=False)
        record = new_run_record(
            {
                **request.to_dict(),
                "register": options.register,
                "evaluate": options.evaluate,
                "memorization_index": options.memorization_index,
            }
        )
        previous = read_run_record(store, request.name, request.run)
        if request.resume and previous is not None:
            record["started_at"] = previous.get("started_at", record["started_at"])
        write_run_record(store, record)
        on_status(f"run {request.name}/{request.run}: {store.uri(run_prefix(request.name, request.run))}/")
        result = _fit_and_follow(store, request, record, options, on_line)
    finally:
        if started_ray:
            ray.shutdown()
    try:
        return _after_training(store, request, result, record, options, registry, on_status)
    except BaseException as exc:
        # The steps are done (latest.json says so), so `--resume` has nothing left to do: record what failed
        # instead of leaving the run `running`, and offer no resume command that would only be refused.
        stopped = isinstance(exc, KeyboardInterrupt)
        what = "stopped by the operator" if stopped else (str(exc).splitlines() or [repr(exc)])[0]
        record.update(
            status=(RunStatus.STOPPED if stopped else RunStatus.FAILED).value,
            error=f"after the last step: {what} (the trained generator is {result.generator_uri})",
            resume_command=None,
            updated_at=now_iso(),
            finished_at=now_iso(),
        )
        with contextlib.suppress(StorageError):  # a store that fails now must not hide the error itself
            write_run_record(store, record)
        raise


def probe_store(store: ObjectStore, request: TrainRequest) -> None:
    """Write and delete a small key in the run's folder, so an `--out` this host cannot write to is refused
    before Ray starts rather than at the run record's first write after it (a folder under a file, a read-only
    folder, a bucket without write access). A store that does not answer is still unavailable (exit 5), now
    naming --out."""
    key = f"{run_prefix(request.name, request.run)}/write-probe-{uuid.uuid4().hex}.tmp"
    try:
        store.put(key, b"catalogan train: write probe\n")
    except TransientStorageError as exc:
        raise TransientStorageError(f"--out {request.out_url}: {exc}") from exc
    except StorageError as exc:
        raise TrainingInputError(f"--out {request.out_url}: cannot write there ({exc})") from exc
    with contextlib.suppress(StorageError):  # training never deletes: a store that refuses it is still usable
        store.delete(key)


def _after_training(
    store: ObjectStore,
    request: TrainRequest,
    result: RunResult,
    record: dict[str, Any],
    options: TrainOptions,
    registry: Callable[[], sessionmaker[Session]] | None,
    on_status: Callable[[str], None],
) -> TrainOutcome:
    """Evaluate, index and register a finished run, record it `finished`, and return its outcome."""
    summary: dict[str, Any] = {
        "name": result.name,
        "run": result.run,
        "step": result.step,
        "checkpoint_uri": result.checkpoint_uri,
        "generator_uri": result.generator_uri,
        "generator_sha256": result.generator_sha256,
        "data_fingerprint": result.data_fingerprint,
        "history_uri": store.uri(f"{run_prefix(result.name, result.run)}/{HISTORY}"),
    }
    metrics: dict[str, Any] = {}
    if options.evaluate:
        on_status(f"evaluating the final generator ({options.evaluate_samples} images per category)")
        metrics.update(evaluate_checkpoint(store.get(result.generator_key), options.evaluate_samples))
    if options.register and options.memorization_index:
        from models.config import get_preset
        from models.memorization_index import METRICS_KEY, store_index_for_training

        on_status("building the memorization index of the training data")
        config = get_preset(result.preset).model
        metrics[METRICS_KEY] = store_index_for_training(
            store, result.generator_key, request.data, config.resolution, config.channels
        )
        summary["memorization_index"] = metrics[METRICS_KEY]["uri"]
    outcome = TrainOutcome(summary=summary, metrics=metrics)
    if options.register:
        if registry is None:
            raise TrainingError("registering needs a registry (pass registry=, or register=False)")
        row = register_version(
            registry(),
            name=result.name,
            preset=result.preset,
            checkpoint_uri=result.generator_uri,
            checkpoint_sha256=result.generator_sha256,
            model_config=result.model_config,
            data_fingerprint=result.data_fingerprint,
            metrics={**metrics, "steps": result.step, "run": result.run},
        )
        ref = f"{row.name}@{row.version}"
        summary["registered"] = ref
        record["registered"] = ref
        outcome.gates = PromotionGates().checks(row.metrics or {}, row.categories)
        outcome.next_command = (
            f"catalogan models promote {ref}"
            if all(gate.passed for gate in outcome.gates)
            else f"catalogan evaluate {ref} --record"
            if not options.evaluate
            else f"catalogan models promote {ref} --force   # below the gates: only if you mean it"
        )
    record.update(status=RunStatus.FINISHED.value, finished_at=now_iso(), updated_at=now_iso())
    write_run_record(store, record)
    return outcome


def _fit_and_follow(
    store: ObjectStore, request: TrainRequest, record: dict[str, Any], options: TrainOptions, on_line: LineFn
) -> Any:
    """`fit_with_ray` with a follower thread; the record ends `failed` or `stopped` if training does not finish.

    A failure is raised again as one `TrainingError` line that ends with the command that resumes the run
    (or says that there is no checkpoint to resume from yet); a bad argument that only a rank could see
    (`fit_with_ray`'s `TrainingInputError`: unreadable --data, ...) as it is.
    """
    from models.training import find_latest

    latest = find_latest(store, request.name, request.run) if request.resume else None
    follower = RunFollower(store, record, on_line, after_step=int(latest["step"]) if latest else -1)
    follower.start()
    status, error, failure = RunStatus.FINISHED, None, None
    try:
        with tempfile.TemporaryDirectory(prefix="catalogan-ray-") as scratch:
            result = fit_with_ray(request, options.ray_dir or Path(scratch))
    except (KeyboardInterrupt, SystemExit) as exc:
        # Ctrl-C, or `kill PID` (the CLI turns SIGTERM into KeyboardInterrupt). During fit Ray Train handles
        # SIGINT itself: it aborts the run and can end it with sys.exit, which must be recorded too.
        status, error = RunStatus.STOPPED, "stopped by the operator"
        if isinstance(exc, SystemExit):
            raise KeyboardInterrupt from exc
        raise
    except Exception as exc:
        status, error, failure = RunStatus.FAILED, str(exc).splitlines()[0] if str(exc) else repr(exc), exc
    finally:
        follower.finished.set()
        follower.join(timeout=30)
        if status is not RunStatus.FINISHED:
            record.update(status=status.value, error=error, updated_at=now_iso(), finished_at=now_iso())
            write_run_record(store, record)
    if isinstance(failure, TrainingInputError):  # a bad argument only a rank could see: no resume hint
        raise failure
    if failure is not None:
        resumable = find_latest(store, request.name, request.run) is not None
        hint = (
            f"resume with: {record['resume_command']}" if resumable else "no checkpoint yet: start it again"
        )
        raise TrainingError(f"{error} ({hint})") from failure
    if follower.error is not None:
        raise TrainingError(f"reading the run's progress failed: {follower.error}") from follower.error
    return result


def evaluate_checkpoint(data: bytes, samples_per_class: int = 1000) -> dict[str, Any]:
    """Evaluate generator checkpoint bytes with the shipped evaluator: scalar and per-category metrics."""
    from models.evaluation import evaluate_generator
    from models.inference import load_generator

    return recorded_metrics(evaluate_generator(load_generator(data), samples_per_class).to_dict())


def recorded_metrics(report: Mapping[str, Any]) -> dict[str, Any]:
    """What a registry row keeps of an evaluation report (`EvaluationReport.to_dict()`): its numbers and its
    per-category dicts, which the per-category promotion gates read. One rule for `train --evaluate`,
    `models register` and `evaluate --record`. A metric not measured (None: CAS under --no-cas, memorization
    without --memorization) is left out, so merging it keeps the value a version already has; so are the
    source, the warnings and local file paths."""
    return {
        key: value
        for key, value in report.items()
        if (isinstance(value, int | float) and not isinstance(value, bool))
        or (key.startswith(("per_class_", "real_per_class_")) and isinstance(value, dict))
    }
