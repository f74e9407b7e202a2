"""`catalogan worker` and `catalogan generate` — loaded lazily by the root command (they import torch).

`worker` starts Celery the right way for the machine: one long-lived process per GPU (`--processes-per-gpu N`
for more), each pinned with `CUDA_VISIBLE_DEVICES` and running the *solo* pool (tasks run in the process
that loaded the model; no CUDA in a forked child); on a CPU box `--concurrency N` processes (default: one per
usable core, at least 2), each with `cores // N` torch threads and its own model cache — one GIL is not enough
for forward, encode and upload. Children are started fresh (no fork of a process that imported torch), die
with the supervisor (PR_SET_PDEATHSIG) and are restarted when they die of a signal. SIGTERM stops the
running chunk at its next batch boundary and releases its lease at once, so another worker picks it up
without waiting for expiry.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from db.cli_support import (
    CATALOGAN_ARGV,
    ExitCode,
    FiniteFloat,
    creative_control_options,
    job_exit_code,
    one_line_errors,
    output_folder,
)
from db.errors import ConfigError
from workers.processes import WorkerProcessSettings, die_with_parent, queue_names

CHILD_STOP_TIMEOUT_SECONDS = 30


def _visible_gpus() -> int:
    import torch  # only here: `catalogan worker --help` stays light

    return int(torch.cuda.device_count())


# What `--gpus` takes besides GPU indices.
GPU_WORDS = ("auto", "none", "pinned")
GPU_INDEX = re.compile(r"[0-9]{1,3}")


def gpu_indices(value: str) -> list[int]:
    """The visible GPUs `value` ('0,1') names; `ValueError` stating the rule when it is not a list of distinct
    indices below the number of visible GPUs (checked at start: a worker on a GPU that is not there said ready
    and failed every chunk)."""
    parts = [part.strip() for part in value.split(",")]
    if not all(GPU_INDEX.fullmatch(part) for part in parts):
        raise ValueError(f"must be {', '.join(GPU_WORDS)} or comma-separated GPU indices such as 0,1")
    indices = [int(part) for part in parts]
    if len(set(indices)) != len(indices):
        raise ValueError("names a GPU twice (--processes-per-gpu runs several processes on one GPU)")
    visible = _visible_gpus()
    for index in indices:
        if index >= visible:
            seen = {0: "no GPU is visible", 1: "only GPU 0 is visible"}.get(
                visible, f"only GPUs 0-{visible - 1} are visible"
            )
            raise ValueError(f"GPU {index}: {seen}")
    return indices


def gpus_option(_ctx: click.Context, param: click.Parameter, value: str) -> str:
    """`--gpus`: a usage error naming the option and its rule when the value is not one `gpu_indices` takes."""
    if value not in GPU_WORDS:
        try:
            gpu_indices(value)
        except ValueError as exc:
            raise click.BadParameter(f"{value!r}: {exc}", param=param) from None
    return value


def queues_option(_ctx: click.Context, param: click.Parameter, value: str | None) -> list[str] | None:
    """`--queues`: the queue names, or a usage error naming the option and the queues there are."""
    if value is None:
        return None
    try:
        return queue_names(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param=param) from None


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask, which containers and `taskset` narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def cpu_split(concurrency: int | None, cores: int) -> tuple[int, int]:
    """(processes, torch threads per process) for a CPU worker; `None` = one single-threaded process per core,
    and at least two.

    Processes rather than threads by default: PNG encoding and the upload path's Python side hold one GIL
    per process, which torch threads do not relieve (1 vs 2 processes on 2 cores: docs/performance.md). On one
    core, two processes hide each other's waits between chunks: near-free images/s rose from 900–1,035 to
    1,191–1,482 with S3 elsewhere, and the compute-bound shipped generator held its rate (219 vs 220–243).
    """
    processes = max(2, cores) if concurrency is None else concurrency
    if processes < 1:
        raise click.BadParameter(f"must be at least 1, got {processes}", param_hint="--concurrency")
    return processes, max(1, cores // processes)


def gpu_split(gpu_ids: list[str], per_gpu: int, cores: int) -> list[tuple[str, int]]:
    """(physical GPU id, CPU threads) of each child: `per_gpu` processes per GPU, sharing the cores evenly.

    One process per GPU leaves the CPU side of a chunk (latents, the gate's glue, PNG encode with provenance,
    the PUT client, SQL) to one GIL: a few thousand images/s, against a forward pass of hundreds of thousands
    per second on the GPU (docs/performance.md). More processes on one GPU share it; each loads its own model.
    """
    if per_gpu < 1:
        raise ValueError(f"processes per GPU must be at least 1, got {per_gpu}")
    threads = max(1, cores // (len(gpu_ids) * per_gpu)) if gpu_ids else 1
    return [(gpu, threads) for gpu in gpu_ids for _ in range(per_gpu)]


def _run_celery_worker(queues: list[str], hostname: str, loglevel: str, torch_threads: int | None) -> None:
    """Run one Celery worker process until it is stopped, after checking every setting its chunks need.

    The check comes first: the context is built on the first task, and a setting refused only there failed
    every task while the worker said ready. A refused setting exits 6 at start, which stops the supervisor."""
    from workers.context import read_worker_config
    from workers.logs import configure_json_logging

    read_worker_config()
    configure_json_logging()
    if torch_threads is not None:
        import torch

        torch.set_num_threads(torch_threads)
    from workers.celery_app import app

    app.worker_main(
        [
            "worker",
            "--pool=solo",
            "--concurrency=1",
            f"--queues={','.join(queues)}",
            f"--hostname={hostname}",
            f"--loglevel={loglevel.upper()}",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ]
    )


def physical_gpu_ids(indices: list[int]) -> list[str]:
    """The ids to put in a child's CUDA_VISIBLE_DEVICES for these visible indices (respecting our own pinning)."""
    inherited = [
        part.strip() for part in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if part.strip()
    ]
    return [inherited[index] if index < len(inherited) else str(index) for index in indices]


@dataclass(frozen=True)
class ChildSpec:
    """How to (re)start one supervised worker process."""

    command: list[str]
    env: dict[str, str]


# A child that exits by itself this soon after its start is misconfigured: restarting it would loop.
CHILD_HEALTHY_AFTER_SECONDS = 10.0
CHILD_POLL_SECONDS = 0.5


def supervise(specs: list[ChildSpec]) -> int:
    """Run one process per spec until SIGTERM/SIGINT (forwarded to every child); returns the worst exit code.

    A child killed by a signal (OOM killer, kill -9) or exiting after it ran a while is restarted: its chunk's
    lease expires and the reaper hands the chunk to a live process. A child exiting with an error right after
    its start, or with the settings' exit code 6 at any time (a slow start must not turn a refused setting
    into a restart loop), stops the supervisor with that exit code instead.
    """
    stopping = False
    children: list[tuple[subprocess.Popen[bytes], float]] = []

    def start(spec: ChildSpec) -> tuple[subprocess.Popen[bytes], float]:
        return subprocess.Popen(spec.command, env=spec.env, preexec_fn=die_with_parent), time.monotonic()

    def forward(signum: int, _frame: Any) -> None:
        nonlocal stopping
        stopping = True
        for child, _ in children:
            if child.poll() is None:
                child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    children.extend(start(spec) for spec in specs)
    worst = 0
    while not stopping:
        time.sleep(CHILD_POLL_SECONDS)
        for slot, (child, started) in enumerate(children):
            code = child.poll()
            if code is None or stopping:
                continue
            if code == ExitCode.CONFIG or (
                code > 0 and time.monotonic() - started < CHILD_HEALTHY_AFTER_SECONDS
            ):
                print(f"worker child {child.pid} exited with {code} at start: stopping", file=sys.stderr)
                forward(signal.SIGTERM, None)
                worst = code
                break
            print(f"worker child {child.pid} exited with {code}: restarting it", file=sys.stderr, flush=True)
            children[slot] = start(specs[slot])
    return max(worst, *(abs(child.wait()) for child, _ in children))


def gpus_for_device(device: str) -> str:
    """The `--gpus` value `CATALOGAN_DEVICE` stands for when the option is not given: `auto` → auto, `cpu` →
    none, `cuda` → every visible GPU (an error when there is none), `cuda:N` → GPU N alone."""
    if device in ("auto", "cpu"):
        return "auto" if device == "auto" else "none"
    return "cuda" if device == "cuda" else device.split(":", 1)[1]


def _child_command(queues: str, loglevel: str, gpus: str, torch_threads: int | None = None) -> list[str]:
    command = [*CATALOGAN_ARGV, "worker", "--gpus", gpus, "--queues", queues, "--loglevel", loglevel]
    if torch_threads is not None:
        command += ["--torch-threads", str(torch_threads)]
    return command


@click.command("worker")
@click.option(
    "--queues",
    "-Q",
    default=None,
    callback=queues_option,
    help="Comma-separated queues of interactive, bulk, backfill [default: CATALOGAN_QUEUES or all three].",
)
@click.option(
    "--gpus",
    default="auto",
    callback=gpus_option,
    help="auto: one process per visible GPU (CPU when none); none: CPU; '0,1': these GPUs (indices below the "
    "number of visible GPUs); pinned: this process uses the GPU CUDA_VISIBLE_DEVICES names [default: from "
    "CATALOGAN_DEVICE: auto -> auto, cpu -> none, cuda -> every visible GPU, cuda:N -> N].",
)
@click.option(
    "--concurrency",
    "-c",
    type=int,
    default=None,
    help="CPU only: worker processes, each with cores // N torch threads and its own model "
    "[default: CATALOGAN_WORKER_CONCURRENCY, else one process per usable core, at least 2]. GPUs: see "
    "--processes-per-gpu.",
)
@click.option(
    "--processes-per-gpu",
    type=click.IntRange(min=1),
    default=None,
    help="GPUs only: worker processes sharing each GPU, each with its own model and cores // (GPUs x N) CPU "
    "threads; more than 1 lifts the CPU-bound side (encode, upload) of a GPU worker [default: "
    "CATALOGAN_PROCESSES_PER_GPU, else 1].",
)
@click.option(
    "--torch-threads",
    type=int,
    default=None,
    hidden=True,
    help="Torch threads of this one process (set by the supervisor for its children).",
)
@click.option(
    "--loglevel", default="info", show_default=True, type=click.Choice(["debug", "info", "warning"])
)
@one_line_errors
def worker(
    queues: list[str] | None,
    gpus: str,
    concurrency: int | None,
    processes_per_gpu: int | None,
    torch_threads: int | None,
    loglevel: str,
) -> None:
    """Run generation workers (Celery, solo pool) until SIGTERM; logs are JSON lines on stderr.

    On a CPU box: --concurrency processes (default one per core, at least 2) under a supervisor that
    restarts a child killed by a signal; on GPUs --processes-per-gpu processes per GPU (default one).
    Settings are checked before anything starts: a bad one is one line naming it, exit 6.

    Settings: CATALOGAN_DATABASE_URL, CATALOGAN_STORAGE_URL, CATALOGAN_BROKER_URL (empty = embedded),
    CATALOGAN_BATCH_SIZE, CATALOGAN_UPLOAD_THREADS, CATALOGAN_LEASE_SECONDS, CATALOGAN_DEVICE,
    CATALOGAN_QUEUES, CATALOGAN_WORKER_CONCURRENCY, CATALOGAN_PROCESSES_PER_GPU.

    Example:

        CATALOGAN_BROKER_URL=redis://localhost:6379/0 catalogan worker --queues bulk,backfill --concurrency 4
    """
    from db.pipeline_settings import WorkerSettings
    from workers.context import read_service_settings

    settings = WorkerSettings()
    processes_settings = WorkerProcessSettings()
    concurrency = concurrency if concurrency is not None else processes_settings.worker_concurrency
    per_gpu = processes_per_gpu or processes_settings.processes_per_gpu
    if queues is None:
        try:
            queues = queue_names(settings.queues)
        except ValueError as exc:
            raise ConfigError(f"CATALOGAN_QUEUES: {exc}") from None
    names = queues
    host = socket.gethostname()
    if click.get_current_context().get_parameter_source("gpus") is ParameterSource.DEFAULT:
        gpus = gpus_for_device(settings.device)  # --gpus not given: CATALOGAN_DEVICE decides
    if gpus == "pinned":
        _run_celery_worker(
            names,
            f"gpu{os.environ.get('CUDA_VISIBLE_DEVICES', '0')}-{os.getpid()}@{host}",
            loglevel,
            torch_threads,
        )
        return
    selected: list[int] = []
    if gpus in ("auto", "cuda"):
        selected = list(range(_visible_gpus()))
        if gpus == "cuda" and not selected:
            raise ConfigError("CATALOGAN_DEVICE=cuda: no CUDA device is visible (use auto or cpu)")
        gpus = "auto"
    elif gpus != "none":
        try:  # --gpus was checked by its callback: only a value from CATALOGAN_DEVICE (cuda:N) can fail here
            selected = gpu_indices(gpus)
        except ValueError as exc:
            raise ConfigError(f"CATALOGAN_DEVICE={settings.device}: {exc} (use auto or cpu)") from None
    if not selected:
        os.environ["CATALOGAN_DEVICE"] = "cpu"
        processes, threads = cpu_split(concurrency, usable_cores())
        if processes == 1:
            _run_celery_worker(names, f"cpu-{os.getpid()}@{host}", loglevel, torch_threads or threads)
            return
        # One line here for a bad service setting, not one per child; each child checks the rest at start
        # (the device and the inference backend need torch, which this supervisor does not load on a CPU box).
        read_service_settings()
        command = _child_command(",".join(names), loglevel, "none", threads)
        env = {**os.environ, "CATALOGAN_WORKER_CONCURRENCY": "1"}
        sys.exit(supervise([ChildSpec(command, env) for _ in range(processes)]))
    if gpus == "auto" and len(selected) == 1 and per_gpu == 1:  # no supervisor needed
        os.environ["CATALOGAN_DEVICE"] = "cuda"
        _run_celery_worker(names, f"gpu0-{os.getpid()}@{host}", loglevel, torch_threads)
        return
    read_service_settings()  # as above; the GPUs were counted, and each child checks the backend at start
    # Each process gets its share of the cores for the CPU side (latents, encode, the gate's glue).
    specs = [
        ChildSpec(
            _child_command(",".join(names), loglevel, "pinned"),
            {
                **os.environ,
                "CUDA_VISIBLE_DEVICES": gpu,
                "CATALOGAN_DEVICE": "cuda",
                "OMP_NUM_THREADS": str(threads),
            },
        )
        for gpu, threads in gpu_split(physical_gpu_ids(selected), per_gpu, usable_cores())
    ]
    sys.exit(supervise(specs))


@click.command("generate")
@click.option(
    "--model", "model_ref", default=None, help="NAME or NAME@VERSION [default: the shipped fashion-cgan]."
)
@click.option(
    "--category", "categories", multiple=True, metavar="CAT=COUNT", help="Images per category (repeat)."
)
@click.option(
    "--sku-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Lines 'SKU,CATEGORY[,COUNT[,CLIENT_ITEM_ID]]' (COUNT defaults to 1, CLIENT_ITEM_ID to the SKU; "
    "'#' starts a comment). With --seed, SKUs already delivered by an earlier job are skipped.",
)
@click.option("--seed", type=int, default=None, help="Job seed; same seed + model version = identical files.")
@click.option(
    "--format",
    "output_format",
    type=click.Choice(["png", "webp", "tar"]),
    default="png",
    show_default=True,
    help="tar: WebDataset shards of PNGs (one per chunk, 1,000 images by default) plus shards/index.json.",
)
@click.option("--chunk-size", type=int, default=None, help="Images per chunk [default: 256].")
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    callback=output_folder,
    help="Folder (created if missing). It must be empty or hold an export of this same job; another job's "
    "export needs --overwrite.",
)
@click.option(
    "--overwrite",
    is_flag=True,
    help="--out holds another job's export: remove the files that export recorded, then export. A folder "
    "holding any other file is still refused.",
)
@click.option(
    "--no-worker", is_flag=True, help="Do not start a worker and reaper: they already run elsewhere."
)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object.")
@click.option(
    "--timeout",
    "timeout_seconds",
    type=FiniteFloat(min=0, min_open=True),
    default=3600.0,
    show_default=True,
    help="Give up after this many seconds (> 0).",
)
@creative_control_options
@one_line_errors
def generate(
    model_ref: str | None,
    categories: tuple[str, ...],
    sku_file: Path | None,
    seed: int | None,
    output_format: str,
    chunk_size: int | None,
    out_dir: Path,
    overwrite: bool,
    no_worker: bool,
    as_json: bool,
    timeout_seconds: float,
    truncation: float | None,
    variation_of: str | None,
    strength: float | None,
    count: int | None,
    interpolate: tuple[str, str] | None,
    frames: int | None,
) -> None:
    """Generate images with a real job and export them to a folder, with a contact sheet per category.

    With no CATALOGAN_* settings everything is embedded under ./catalogan-data/ (SQLite, a local object
    folder, a filesystem message broker) and the command starts a real `catalogan worker` and
    `catalogan beat` itself, then stops them. With CATALOGAN_DATABASE_URL / CATALOGAN_BROKER_URL /
    CATALOGAN_STORAGE_URL set it uses those services; pass --no-worker when workers already run there.

    --truncation, --variation-of and --interpolate control what you get (docs/controlling.md); variations
    and frames are jobs like any other, their files carry the recipe and `catalogan verify --regenerate`
    recomputes them.

    --out must be new, empty, or hold an export of this same job (running a command again exports its job
    again). The export records its files in --out/.catalogan-export.jsonl; --overwrite replaces another
    job's export by removing exactly those files. Files no export wrote are never touched: such a folder
    is refused.

    Example:

    \b
        catalogan generate --category sneaker=16 --category dress=16 --seed 7 --out out/
        catalogan generate --variation-of 4f0c2a9e8b7d4c6a9e2f1b3d5c7a9e0f/3 --strength 0.3 --count 8 --out var/
        catalogan generate --variation-of out/dress/00000003.png --strength 0.3 --count 8 --out var/
        catalogan generate --category sneaker=16 --seed 8 --out out/ --overwrite
    """
    from workers.generate_command import GenerateRequest, run_generate

    request = GenerateRequest(
        model_ref=model_ref,
        categories=categories,
        sku_file=sku_file,
        seed=seed,
        output_format=output_format,
        chunk_size=chunk_size,
        out_dir=out_dir,
        start_worker=not no_worker,
        show_progress=not as_json,
        timeout_seconds=timeout_seconds,
        truncation=truncation,
        variation_of=variation_of,
        strength=strength,
        count=count,
        interpolate=interpolate,
        frames=frames,
        overwrite=overwrite,
    )
    summary = run_generate(request)
    if as_json:
        click.echo(json.dumps(summary, sort_keys=True))
    else:
        click.echo(
            f"job {summary['job_id']} {summary['status']}: {summary['images_done']}/{summary['images_total']} images "
            f"({summary['images_failed']} failed), model {summary['model_version']}, seed {summary['seed']}"
        )
        if summary["items_skipped_existing"]:
            click.echo(
                f"skipped {summary['items_skipped_existing']} items ({summary['images_skipped_existing']} images) "
                "already delivered by an earlier job: listed in the manifest as skipped_existing"
            )
        if summary["replaced_export"]:
            replaced = summary["replaced_export"]
            click.echo(
                f"replaced the export of job {replaced['job_id']} ({replaced['files_removed']} files removed)"
            )
        click.echo(f"images, manifest and contact sheets in {summary['output']}")
    if summary["status"] != "succeeded":
        sys.exit(job_exit_code(summary["status"]))
