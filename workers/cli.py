"""`catalogan worker` and `catalogan generate` — loaded lazily by the root command (they import torch).

`worker` starts Celery the right way for the machine: one long-lived process per GPU, each pinned with
`CUDA_VISIBLE_DEVICES` and running the *solo* pool (tasks run in the process that loaded the model; no
CUDA in a forked child); one process on a CPU box. SIGTERM stops the running chunk at its next batch
boundary and releases its lease at once, so another worker picks it up without waiting for expiry.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import click

from scheduler.cli.errors import ExitCode, one_line_errors

# The command that runs `catalogan` with this interpreter, whether or not the console script is on PATH.
CATALOGAN = [sys.executable, "-c", "from scheduler.cli import main; main()"]
CHILD_STOP_TIMEOUT_SECONDS = 30


def _visible_gpus() -> int:
    import torch  # only here: `catalogan worker --help` stays light

    return int(torch.cuda.device_count())


def _run_celery_worker(queues: list[str], hostname: str, loglevel: str) -> None:
    from workers.logs import configure_json_logging

    configure_json_logging()
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


def _supervise(gpus: list[int], queues: str, loglevel: str) -> int:
    """One `catalogan worker` child per GPU; SIGTERM/SIGINT are forwarded; returns the worst exit code."""
    children = []
    for gpu in physical_gpu_ids(gpus):
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": gpu, "CATALOGAN_DEVICE": "cuda"}
        command = [*CATALOGAN, "worker", "--gpus", "pinned", "--queues", queues, "--loglevel", loglevel]
        children.append(subprocess.Popen(command, env=env))

    def forward(signum: int, _frame: Any) -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    return max(child.wait() for child in children)


@click.command("worker")
@click.option(
    "--queues", "-Q", default=None, help="Comma-separated queues [default: CATALOGAN_QUEUES or all three]."
)
@click.option(
    "--gpus",
    default="auto",
    show_default=True,
    help="auto: one process per visible GPU (CPU when none); none: CPU; '0,1': these GPUs; pinned: this "
    "process uses the GPU CUDA_VISIBLE_DEVICES names.",
)
@click.option(
    "--loglevel", default="info", show_default=True, type=click.Choice(["debug", "info", "warning"])
)
@one_line_errors
def worker(queues: str | None, gpus: str, loglevel: str) -> None:
    """Run a generation worker (Celery, solo pool) until SIGTERM; logs are JSON lines on stderr.

    Settings: CATALOGAN_DATABASE_URL, CATALOGAN_STORAGE_URL, CATALOGAN_BROKER_URL (empty = embedded),
    CATALOGAN_BATCH_SIZE, CATALOGAN_UPLOAD_THREADS, CATALOGAN_LEASE_SECONDS, CATALOGAN_DEVICE.

    Example:

        CATALOGAN_BROKER_URL=redis://localhost:6379/0 catalogan worker --queues bulk,backfill
    """
    from db.messaging import check_queue
    from db.pipeline_settings import WorkerSettings

    settings = WorkerSettings()
    names = [name.strip() for name in (queues or settings.queues).split(",") if name.strip()]
    for name in names:
        check_queue(name)
    host = socket.gethostname()
    if gpus == "pinned":
        _run_celery_worker(
            names, f"gpu{os.environ.get('CUDA_VISIBLE_DEVICES', '0')}-{os.getpid()}@{host}", loglevel
        )
        return
    if gpus == "none":
        os.environ["CATALOGAN_DEVICE"] = "cpu"
        _run_celery_worker(names, f"cpu-{os.getpid()}@{host}", loglevel)
        return
    selected = list(range(_visible_gpus())) if gpus == "auto" else [int(part) for part in gpus.split(",")]
    if not selected:
        os.environ.setdefault("CATALOGAN_DEVICE", "cpu")
        _run_celery_worker(names, f"cpu-{os.getpid()}@{host}", loglevel)
        return
    if gpus == "auto" and len(selected) == 1:  # the one visible GPU: no supervisor needed
        os.environ["CATALOGAN_DEVICE"] = "cuda"
        _run_celery_worker(names, f"gpu0-{os.getpid()}@{host}", loglevel)
        return
    sys.exit(_supervise(selected, ",".join(names), loglevel))


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
    "--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path), help="Folder."
)
@click.option(
    "--no-worker", is_flag=True, help="Do not start a worker and reaper: they already run elsewhere."
)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object.")
@click.option(
    "--timeout", "timeout_seconds", type=float, default=3600.0, show_default=True, help="Give up after."
)
@one_line_errors
def generate(
    model_ref: str | None,
    categories: tuple[str, ...],
    sku_file: Path | None,
    seed: int | None,
    output_format: str,
    chunk_size: int | None,
    out_dir: Path,
    no_worker: bool,
    as_json: bool,
    timeout_seconds: float,
) -> None:
    """Generate images with a real job and export them to a folder, with a contact sheet per category.

    With no CATALOGAN_* settings everything is embedded under ./catalogan-data/ (SQLite, a local object
    folder, a filesystem message broker) and the command starts a real `catalogan worker` and
    `catalogan beat` itself, then stops them. With CATALOGAN_DATABASE_URL / CATALOGAN_BROKER_URL /
    CATALOGAN_STORAGE_URL set it uses those services; pass --no-worker when workers already run there.

    Example:

        catalogan generate --category sneaker=16 --category dress=16 --seed 7 --out out/
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
        click.echo(f"images, manifest and contact sheets in {summary['output']}")
    if summary["status"] != "succeeded":
        sys.exit(ExitCode.JOB_FAILED)
