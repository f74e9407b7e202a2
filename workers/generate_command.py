"""The main job as a plain function: plan → (start worker + reaper) → wait with progress → export → summary.

Same code path as the distributed stack and the API: the options become a `JobSpec` (`generate_spec`), the
job is submitted by `db.planning.submit_job`, its chunks travel through the broker to a real
`catalogan worker` process, and the reaper runs as `catalogan beat`.

The job id is derived from the request (tenant, model version, spec incl. the seed): running the same
command again against the same database finds that job and exports it again (or waits for it, if a
previous run was interrupted), and two fresh data folders produce byte-identical files — the job id is
part of each file's provenance, so a random id would make every run's bytes differ.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import hashlib
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from db import control_options, migrate
from db.cli_support import CATALOGAN_ARGV, ExitCode, Interrupted
from db.control_options import option_as_typed
from db.engine import engine_from_settings, make_session_factory, read_only_session_factory, transaction
from db.errors import ConfigError, ConflictError, NotFoundError, PlanningError
from db.incremental import count_skipped_items
from db.job_specs import (
    MAX_IMAGES_PER_ITEM,
    JobSpec,
    SubmitLimits,
    parse_job_spec,
    request_sha256,
    split_model_ref,
)
from db.messaging import CeleryPublisher, make_celery_app
from db.model_versions import list_model_versions
from db.planning import (
    ModelVersionLike,
    PlannedJob,
    category_indices,
    publish_planned,
    resolve_job_model,
    resolve_model_and_control,
    submit_job,
)
from db.settings import BrokerSettings, DatabaseSettings, DataSettings, StorageSettings
from db.status import ChunkStatus, JobStatus
from db.storage import ObjectStore, open_store
from db.tables import Chunk, Job, ModelVersion, Tenant
from workers.export import JobExport, check_output_folder, check_replaceable, remove_export

LOCAL_TENANT_NAME = "local"
LOCAL_TENANT_ID = uuid.uuid5(uuid.NAMESPACE_URL, "catalogan:tenant:local").hex
DEFAULT_MODEL_NAME = "fashion-cgan"
POLL_INTERVAL_SECONDS = 0.25
CHILD_STOP_TIMEOUT_SECONDS = 30


@dataclass(frozen=True)
class GenerateRequest:
    """The parsed options of `catalogan generate`."""

    model_ref: str | None
    categories: tuple[str, ...]
    sku_file: Path | None
    seed: int | None
    output_format: str
    chunk_size: int | None
    out_dir: Path
    start_worker: bool = True
    show_progress: bool = True
    timeout_seconds: float = 3600.0
    # Creative control (docs/controlling.md): ψ; variations of "JOB/INDEX"; frames between two "JOB/INDEX".
    truncation: float | None = None
    variation_of: str | None = None
    strength: float | None = None
    count: int | None = None
    interpolate: tuple[str, str] | None = None
    frames: int | None = None
    # --out holds another job's export: replace it (only the files that export recorded; see workers.export).
    overwrite: bool = False


# A count as typed: ASCII digits only (`str.isdigit` lets '²' through, and `int()` then fails unnamed).
COUNT_PATTERN = re.compile(r"[0-9]+")
COUNT_RULE = f"the count must be a whole number 1..{MAX_IMAGES_PER_ITEM}"


def read_sku_rows(sku_file: Path) -> list[tuple[int, list[str]]]:
    """(line number, CSV fields) of each row of a SKU file that is not blank or a comment; `PlanningError`
    naming --sku-file when the file is not UTF-8 text (a leading BOM is allowed) or a row is not CSV.

    Each line is read as one CSV record, so a spreadsheet's quoting holds: `"A1",sneaker` is SKU A1 (a split at
    every comma kept the quotes in the SKU), `"A,1",sneaker` is SKU `A,1`. A record stays on one line, and `#`
    starts a comment anywhere on it, as before, so the row numbers in errors are the file's lines."""
    data = sku_file.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        row = data.count(b"\n", 0, exc.start) + 1
        raise PlanningError(
            "--sku-file",
            "utf8",
            f"--sku-file {str(sku_file)!r}: must be UTF-8 text (CSV): byte 0x{data[exc.start]:02x} at offset "
            f"{exc.start} (row {row}) is not UTF-8",
        ) from None
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        try:  # strict: `"A1"x,...` or an unclosed quote is an error, not a SKU with a stray quote in it
            (fields,) = csv.reader([line], skipinitialspace=True, strict=True)
        except csv.Error as exc:
            raise PlanningError(
                "--sku-file", "sku_line", f"--sku-file row {number}: not a CSV record ({exc})"
            ) from None
        rows.append((number, [part.strip() for part in fields]))
    return rows


def parse_items(categories: tuple[str, ...], sku_file: Path | None) -> list[dict[str, Any]]:
    """Items from `CAT=COUNT` options and a SKU file; raise `PlanningError` naming the bad input as typed
    (`--category 'bag=x'`, `--sku-file row 3`: the file's line number)."""
    items: list[dict[str, Any]] = []
    for option in categories:
        name, sep, count = option.partition("=")
        if not sep or not name.strip():
            raise PlanningError(
                "--category",
                "category_count",
                f"--category {option!r}: must be CATEGORY=COUNT, e.g. sneaker=16",
            )
        if not COUNT_PATTERN.fullmatch(count.strip()):
            raise PlanningError(
                "--category", "category_count", f"--category {option!r}: {COUNT_RULE}, e.g. sneaker=16"
            )
        items.append({"category": name.strip(), "count": int(count)})
    for number, parts in read_sku_rows(sku_file) if sku_file is not None else []:
        if len(parts) not in (2, 3, 4):
            raise PlanningError(
                "--sku-file",
                "sku_line",
                f"--sku-file row {number}: must be 'SKU,CATEGORY[,COUNT[,CLIENT_ITEM_ID]]'",
            )
        if len(parts) >= 3 and not COUNT_PATTERN.fullmatch(parts[2]):
            raise PlanningError(
                "--sku-file", "sku_line", f"--sku-file row {number}: count {parts[2]!r}: {COUNT_RULE}"
            )
        items.append(
            {
                "sku": parts[0],
                "category": parts[1],
                "count": int(parts[2]) if len(parts) >= 3 else 1,
                # The item's identity for incremental resubmits (db.incremental): the SKU unless given.
                "client_item_id": parts[3] if len(parts) == 4 and parts[3] else parts[0],
            }
        )
    if not items:
        raise PlanningError(
            "items", "required", "items: give at least one --category CAT=COUNT or a --sku-file"
        )
    return items


def item_error_as_typed(request: GenerateRequest, exc: PlanningError) -> PlanningError:
    """`exc` about `items[N].FIELD` renamed after the input that made item N, as typed: `--category bag=0:
    count: ...` or `--sku-file row 3: category: ...` (the file's line number); any other error as it is."""
    match = re.fullmatch(r"items\[(\d+)\]\.(\w+)", exc.field)
    if match is None:
        return exc
    sources = [f"--category {option}" for option in request.categories]
    if request.sku_file is not None:
        sources += [f"--sku-file row {number}" for number, _ in read_sku_rows(request.sku_file)]
    index, rule_text = int(match.group(1)), str(exc).split(": ", 1)[-1]
    where = sources[index] if index < len(sources) else exc.field
    return PlanningError(exc.field, exc.rule, f"{where}: {match.group(2)}: {rule_text}")


# The spec's fields that one option sets, and that option's name as typed (`item_error_as_typed` does the
# items; `db.control_options.option_as_typed` the creative-control options and their sources).
OPTION_OF_FIELD = {
    "model": "--model",
    "seed": "--seed",
    "output_format": "--format",
    "chunk_size": "--chunk-size",
}


def _typed_controls(request: GenerateRequest) -> dict[str, Any]:
    """The creative-control options as typed (None: not given)."""
    return {
        "--truncation": request.truncation,
        "--variation-of": request.variation_of,
        "--strength": request.strength,
        "--count": request.count,
        "--interpolate": request.interpolate,
        "--frames": request.frames,
    }


def option_error_as_typed(request: GenerateRequest, exc: PlanningError) -> PlanningError:
    """`exc` about a field one option sets renamed after that option and its value as typed: `--seed -1: ...`
    rather than `seed: ...`, `--variation-of 'abc/3': no delivered image ...` rather than `variation.source:
    ...` (the API's field names mean nothing on a command line); any other error as it is."""
    rule_text = str(exc).split(": ", 1)[-1]
    control = option_as_typed(exc.field, _typed_controls(request))
    if control is not None:
        return PlanningError(control.split(" ", 1)[0], exc.rule, f"{control}: {rule_text}")
    option = OPTION_OF_FIELD.get(exc.field)
    if option is None:
        return exc
    value = {
        "--model": request.model_ref,
        "--seed": request.seed,
        "--format": request.output_format,
        "--chunk-size": request.chunk_size,
    }[option]
    typed = f"{value:g}" if isinstance(value, float) else repr(value) if isinstance(value, str) else value
    return PlanningError(option, exc.rule, f"{option} {typed}: {rule_text}")


def generate_spec(request: GenerateRequest) -> JobSpec:
    """The domain request of `catalogan generate`: the model named (default fashion-cgan), the items of the
    --category options and the SKU file, the seed (chosen here when absent: it is part of the job id). The
    submit path's bounds (`SubmitLimits`) are checked here too, before anything is migrated or registered.

    A broken item is named as it was typed: `--category bag=0: count: ...`, or the SKU file's row; a broken
    option too: `--seed -1: ...`, `--model 'fashion-cgan@x': ...`."""
    try:
        spec = _parse_generate_spec(request)
        SubmitLimits().check(spec)
    except PlanningError as exc:
        raise option_error_as_typed(request, item_error_as_typed(request, exc)) from None
    return spec


def check_categories(request: GenerateRequest, spec: JobSpec, model_version: ModelVersionLike) -> None:
    """`PlanningError` naming the --category / --sku-file row as typed when an item's category is not one of
    `model_version`'s (with the list of its categories): the submit path's own check, made before anything is
    committed. A variation or interpolation takes its category from its source images."""
    if spec.variation is not None or spec.interpolation is not None:
        return
    try:
        category_indices(spec, model_version)
    except PlanningError as exc:
        raise item_error_as_typed(request, exc) from None


def check_option_combinations(request: GenerateRequest) -> None:
    """`PlanningError` naming the options as typed when they do not go together
    (`db.control_options.check_option_combinations`, the rules `catalogan jobs submit` applies too):
    --variation-of with --interpolate; --strength/--count without --variation-of, --frames without
    --interpolate (or a control without them); --category/--sku-file with a control (its images come from its
    source images); --truncation with --interpolate (each end keeps its own ψ). --truncation with
    --variation-of, --seed, --model, --format and --chunk-size go with everything."""
    given = {option: value is not None for option, value in _typed_controls(request).items()}
    control_options.check_option_combinations(
        {"--category": bool(request.categories), "--sku-file": request.sku_file is not None, **given}
    )


def _control_fields(request: GenerateRequest) -> dict[str, Any]:
    """The spec's variation / interpolation from --variation-of/--strength/--count and --interpolate/--frames
    (their combinations already checked)."""
    if request.variation_of is not None:
        assert request.strength is not None and request.count is not None
        source = control_options.parse_image_ref("--variation-of", request.variation_of)
        return {"variation": {"source": source, "strength": request.strength, "count": request.count}}
    if request.interpolate is not None:
        assert request.frames is not None
        start, end = (
            control_options.parse_image_ref("--interpolate", value) for value in request.interpolate
        )
        return {"interpolation": {"start": start, "end": end, "frames": request.frames}}
    return {}


def _parse_generate_spec(request: GenerateRequest) -> JobSpec:
    check_option_combinations(request)
    if request.model_ref is not None:
        split_model_ref(request.model_ref)  # `--model ''` was the default model; `@x` failed after migrating
    control = _control_fields(request)  # a variation or interpolation: its sources' model unless named
    spec: dict[str, Any] = {
        "model": request.model_ref if control or request.model_ref is not None else DEFAULT_MODEL_NAME,
        "seed": request.seed if request.seed is not None else int.from_bytes(os.urandom(8), "little") >> 1,
        "output_format": request.output_format,
        "chunk_size": request.chunk_size,
        "truncation": request.truncation,
        **(control or {"items": parse_items(request.categories, request.sku_file)}),
    }
    return parse_job_spec({key: value for key, value in spec.items() if value is not None})


@dataclass(frozen=True)
class ShippedModel:
    """The shipped fashion-cgan as planning sees a model version (`ModelVersionLike`), before it is registered:
    its categories come from `models/weights/fashion-cgan/metadata.json`; a fresh registry makes it version 1."""

    categories: tuple[str, ...]
    id: int = 0
    name: str = DEFAULT_MODEL_NAME
    version: int = 1


def names_shipped_model(spec: JobSpec) -> bool:
    """True when the job's model is the shipped default: `fashion-cgan` with no version (a plain job)."""
    if spec.model is None or spec.variation is not None or spec.interpolation is not None:
        return False
    return split_model_ref(spec.model) == (DEFAULT_MODEL_NAME, None)


def check_shipped_categories(request: GenerateRequest, spec: JobSpec) -> None:
    """`check_categories` against the shipped model's own list, for a registry that holds no fashion-cgan yet.

    Registering it builds its memorization index (a minute or more of CPU) and the data folder: a typo in a
    category was reported only after both. Call it only where the registry has no fashion-cgan, as the
    registered one (a newer version, or a model trained under that name) may have other categories."""
    from models.default_model import shipped_metadata

    categories = shipped_metadata().get("model_config", {}).get("categories", [])
    check_categories(request, spec, ShippedModel(tuple(str(category) for category in categories)))


def check_default_categories(
    session_factory: sessionmaker[Session], request: GenerateRequest, spec: JobSpec
) -> None:
    """The categories of a job for the default model, checked before `_ensure_default_model` (which may build
    the memorization index): against the shipped list while the registry holds no fashion-cgan, else against
    the version the job would get (when none resolves, the resolution after registration says so)."""
    with session_factory() as session:
        registered = session.scalar(
            select(ModelVersion.id).where(ModelVersion.name == DEFAULT_MODEL_NAME).limit(1)
        )
        if registered is None:
            check_shipped_categories(request, spec)
            return
        try:
            model_version = resolve_job_model(session, spec.model)
        except NotFoundError:
            return
        check_categories(request, spec, model_version)


def check_worker_settings() -> None:
    """Read and check the settings of the `catalogan worker` and `catalogan beat` started here, as they check
    them at their start: `ConfigError` naming the variable (exit 6).

    Before anything is submitted: a worker refusing `CATALOGAN_WORKER_CONCURRENCY=abc` only once it ran left
    a queued job and an --out folder, and an error naming the worker's exit code, not the variable."""
    from db.pipeline_settings import ReaperSettings, WorkerSettings
    from workers.context import read_worker_config
    from workers.processes import WorkerProcessSettings, queue_names

    settings = WorkerSettings()
    WorkerProcessSettings()
    ReaperSettings()
    try:
        queue_names(settings.queues)
    except ValueError as exc:
        raise ConfigError(f"CATALOGAN_QUEUES: {exc}") from None
    read_worker_config(settings)


def ensure_local_tenant(session: Session) -> str:
    """The embedded stack's single tenant (`local`), created on first use."""
    if session.get(Tenant, LOCAL_TENANT_ID) is None:
        session.add(Tenant(id=LOCAL_TENANT_ID, name=LOCAL_TENANT_NAME))
        session.flush()
    return LOCAL_TENANT_ID


def _ensure_default_model(session_factory: sessionmaker[Session], store: ObjectStore, model_ref: str) -> None:
    """Register the shipped fashion-cgan (weights in the package) when the request names it."""
    if split_model_ref(model_ref)[0] != DEFAULT_MODEL_NAME:
        return
    from models.default_model import ensure_default_model

    # The first registration builds the memorization index (a minute or more on a small CPU): say so.
    ensure_default_model(
        session_factory, store, notify=lambda message: print(message, file=sys.stderr, flush=True)
    )


def derived_job_id(tenant_id: str, model_version_id: int, spec: JobSpec) -> str:
    """A job id that is a function of the request, so the same request maps to the same job."""
    material = f"{tenant_id}:{model_version_id}:{request_sha256(spec)}"
    return hashlib.sha256(material.encode()).hexdigest()[:32]


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[None]:
    """While inside, SIGTERM ends the command as Ctrl-C does (`Interrupted`, exit 143, through every
    `finally`), instead of killing it at once and leaving its children running. Only in the main thread (where
    Python handles signals); the previous handler comes back after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: Any) -> None:
        raise Interrupted(exit_code=128 + signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _start_children(data: DataSettings) -> dict[str, subprocess.Popen[bytes]]:
    """`catalogan worker` and `catalogan beat`, logging to the data folder's `logs/`. Each gets SIGTERM when
    this process dies, even by kill -9 (the worker supervisor's own `die_with_parent`): SIGTERM, not
    SIGKILL, so the worker releases its chunk. Without it they lived on, and a rerun started a second beat."""
    from workers.processes import die_with_parent

    env = {**os.environ, "CATALOGAN_DATA_DIR": str(data.resolved)}
    logs = data.resolved / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    children: dict[str, subprocess.Popen[bytes]] = {}
    for name in ("worker", "beat"):
        with (logs / f"{name}.log").open("ab") as log:
            children[name] = subprocess.Popen(
                [*CATALOGAN_ARGV, name],
                env=env,
                stdout=log,
                stderr=log,
                preexec_fn=functools.partial(die_with_parent, signal.SIGTERM),
            )
    return children


def _stop_children(children: dict[str, subprocess.Popen[bytes]]) -> None:
    for child in children.values():
        if child.poll() is None:
            child.terminate()  # graceful: the worker releases its chunk
    deadline = time.monotonic() + CHILD_STOP_TIMEOUT_SECONDS
    for child in children.values():
        try:
            child.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def _wait(
    session_factory: sessionmaker[Session],
    job_id: str,
    request: GenerateRequest,
    children: dict[str, subprocess.Popen[bytes]],
    exporter: JobExport,
    logs: Path,
) -> Job:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    reads = read_only_session_factory(session_factory)  # on SQLite a poll and its export never block a worker
    deadline = time.monotonic() + request.timeout_seconds
    columns = (TextColumn("generating"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    # On stderr, and only on a terminal: on stdout a piped run's first line was the bar's empty line.
    console = Console(stderr=True)
    show = request.show_progress and console.is_terminal
    with Progress(*columns, console=console, disable=not show, transient=True) as progress:
        task = None
        while True:
            with reads() as session:
                job = session.get(Job, job_id)
                assert job is not None
                if task is None:
                    task = progress.add_task("images", total=job.images_total)
                progress.update(task, completed=job.images_done + job.images_failed)
                if job.status.is_terminal:
                    return job
                exporter.export_finished(session)  # the export streams while the job runs
            for name, child in children.items():
                if child.poll() is not None:
                    log = logs / f"{name}.log"
                    if child.returncode == ExitCode.CONFIG:  # a setting it refused: its exit code, 6
                        raise ConfigError(f"`catalogan {name}` refused a setting (exit 6): see {log}")
                    raise ConflictError(
                        f"`catalogan {name}` exited with {child.returncode}: see {log}; job {job_id} goes on "
                        "when the same command runs again"
                    )
            if time.monotonic() > deadline:
                raise ConflictError(
                    f"job {job_id} did not finish within {request.timeout_seconds:g} s: it goes on when the "
                    "same command runs again, which waits for it and exports it"
                )
            time.sleep(POLL_INTERVAL_SECONDS)


def run_generate(request: GenerateRequest) -> dict[str, Any]:
    """Run (or find) the job for this request, wait for it, export it; return the summary.

    Ctrl-C or SIGTERM raises `Interrupted` (exit 130 / 143, one line): once the job exists, the line says the
    same command resumes it; the worker and beat started here are stopped on the way out."""
    with _sigterm_raises():  # `kill PID` or `timeout` must stop the worker and beat started here too
        return _run_generate(request)


def _run_generate(request: GenerateRequest) -> dict[str, Any]:
    data, db_settings, storage, broker = (
        DataSettings(),
        DatabaseSettings(),
        StorageSettings(),
        BrokerSettings(),
    )
    if not math.isfinite(request.timeout_seconds) or request.timeout_seconds <= 0:  # the CLI refuses it too
        raise PlanningError(
            "--timeout", "positive", f"--timeout {request.timeout_seconds}: must be > 0 seconds"
        )
    spec = generate_spec(request)  # argument checks first: nothing is registered or printed for a typo
    # --out: files no export wrote are refused before anything happens; another job's export without
    # --overwrite as soon as that is known (a random seed is a new job; else once the job id is derived),
    # always before the job is submitted.
    previous = check_output_folder(request.out_dir)
    if request.seed is None:
        check_replaceable(request.out_dir, previous, job_id="", overwrite=request.overwrite)
    url = db_settings.url(data)
    shipped = names_shipped_model(spec)
    if shipped and not db_settings.database_url and not (data.resolved / "catalogan.db").exists():
        check_shipped_categories(request, spec)  # a fresh data folder: a typo must not create it
    if request.start_worker:
        check_worker_settings()  # nothing is created or submitted for a setting the worker would refuse
    migrate.upgrade(url)
    session_factory = make_session_factory(engine_from_settings(db_settings, data))
    if shipped:
        check_default_categories(session_factory, request, spec)  # before a memorization index is built
    store = open_store(storage.url(data))
    if spec.model is not None:  # a variation or interpolation without --model: its sources' model
        _ensure_default_model(session_factory, store, spec.model)
    app = make_celery_app(broker, data)
    publisher = CeleryPublisher(app)
    # One transaction: every check below comes before the local tenant is made, and an error rolls it back.
    with transaction(session_factory) as session:
        tenant_id = LOCAL_TENANT_ID
        # The job id is a function of the resolved version (see the module docstring), so the model is
        # resolved here, by the submit path's own resolver (a variation or interpolation: its sources, checked,
        # and their version), and handed to submit_job, which checks the sources again.
        try:
            _, model_version = resolve_model_and_control(session, spec, tenant_id)
        except (NotFoundError, PlanningError) as exc:
            raise _resolution_error_as_typed(session, request, spec, exc) from None
        check_categories(request, spec, model_version)
        model_ref = f"{model_version.name}@{model_version.version}"
        job_id = derived_job_id(tenant_id, model_version.id, spec)
        check_replaceable(request.out_dir, previous, job_id=job_id, overwrite=request.overwrite)
        existing = session.get(Job, job_id)
        ensure_local_tenant(session)
    if existing is not None and existing.status in (
        JobStatus.FAILED,
        JobStatus.COMPLETED_WITH_FAILURES,
        JobStatus.CANCELLED,
    ):
        raise ConflictError(
            f"job {job_id} for this request already ended {existing.status.value}; use another --seed or data folder"
        )
    try:
        if existing is None:
            try:
                submit_job(
                    session_factory,
                    spec,
                    tenant_id=tenant_id,
                    publisher=publisher,
                    job_id=job_id,
                    model_version=model_version,
                )
            except PlanningError as exc:  # a source that changed since it was checked above, named as typed
                raise option_error_as_typed(request, exc) from None
        replaced: dict[str, Any] | None = None
        if previous is not None and previous.job_id != job_id:  # --overwrite was given (checked above)
            replaced = {"job_id": previous.job_id, "files_removed": remove_export(request.out_dir, previous)}
        children: dict[str, subprocess.Popen[bytes]] = {}
        try:
            if request.start_worker and not existing_is_done(existing):
                children = _start_children(data)
            with session_factory() as session:
                exporter = JobExport(store, session.get_one(Job, job_id), request.out_dir)
            if existing is not None and not existing.status.is_terminal:
                _republish_pending(session_factory, job_id, existing.queue, publisher)
            job = _wait(session_factory, job_id, request, children, exporter, data.resolved / "logs")
        finally:
            _stop_children(children)
        with session_factory() as session:
            found = session.get(Job, job_id)
            assert found is not None
            job = found
            exported = exporter.finish(session)
            skipped_items, skipped_images = count_skipped_items(session, job.id)
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM (`_sigterm_raises`)
        raise Interrupted(
            f"interrupted: job {job_id} goes on when the same command runs again",
            exit_code=getattr(exc, "exit_code", ExitCode.INTERRUPTED),
        ) from None
    return {
        "job_id": job.id,
        "status": job.status.value,
        "images_total": int(job.images_total),
        "images_done": int(job.images_done),
        "images_failed": int(job.images_failed),
        "items_skipped_existing": skipped_items,
        "images_skipped_existing": skipped_images,
        "seed": int(job.seed),
        "model_version": model_ref,
        "output": str(request.out_dir.resolve()),
        "exported_images": exported.images,
        "contact_sheets": [str(path) for path in exported.contact_sheets],
        "manifests": [str(path) for path in exported.manifests],
        "replaced_export": replaced,
    }


def _resolution_error_as_typed(
    session: Session, request: GenerateRequest, spec: JobSpec, exc: NotFoundError | PlanningError
) -> Exception:
    """An error of `resolve_model_and_control` as typed: a source named by its option (`--variation-of
    'abc/3': no delivered image ...`); an unknown or retired --model with the registered versions; a retired
    model version of the sources (no --model given) under the source's option."""
    if isinstance(exc, PlanningError) and exc.field != "model":
        return option_error_as_typed(request, exc)
    reason = str(exc).removeprefix("model: ")
    if spec.model is None and (spec.variation is not None or spec.interpolation is not None):
        source = option_as_typed(
            "variation.source" if spec.variation is not None else "interpolation.start",
            _typed_controls(request),
        )
        assert source is not None  # a control job comes from its option
        rule = exc.rule if isinstance(exc, PlanningError) else "registered"
        return PlanningError(
            source.split(" ", 1)[0], rule, f"{source}: the model version that made it: {reason}"
        )
    if isinstance(exc, PlanningError) and exc.rule == "source_model_version":
        return PlanningError("--model", exc.rule, f"--model {spec.model!r}: {reason}")
    known = ", ".join(f"{m.name}@{m.version} ({m.status.value})" for m in list_model_versions(session))
    return NotFoundError(f"--model {spec.model}: {reason}; registered: {known or 'none'}")


def existing_is_done(job: Job | None) -> bool:
    """True when a job found for the request is already finished (nothing to run)."""
    return job is not None and job.status.is_terminal


def _republish_pending(
    session_factory: sessionmaker[Session], job_id: str, queue: str, publisher: CeleryPublisher
) -> None:
    """A resumed job: publish its pending chunks again (their messages may be gone with the last run)."""
    with session_factory() as session:
        ids = tuple(
            session.scalars(
                select(Chunk.id).where(Chunk.job_id == job_id, Chunk.status == ChunkStatus.PENDING)
            )
        )
    publish_planned(
        session_factory,
        PlannedJob(job_id=job_id, chunk_ids=ids, queue=queue, seed=0, images_total=0),
        publisher,
    )
