"""`catalogan train` (and `train ls|show`): thin commands over plain functions.

Imported lazily by the root command; torch and Ray are imported only inside `train`. The `models` group lives in
`models/cli_models.py`.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import click
from sqlalchemy.orm import Session, sessionmaker

from db import migrate
from db.cli_support import model_name_option, one_line_errors, output_folder_problem
from db.engine import engine_from_settings, make_session_factory
from db.job_specs import MAX_SEED
from db.settings import DatabaseSettings, DataSettings, StorageSettings

# Upper bounds of `train` arguments, checked when the command line is parsed, so a typo stops before Ray starts
# instead of inside a rank (here, not in models.training: this module loads without torch). They bound
# nonsense, not what fits: 10 million steps is 41 hours of fashion-cgan at the 67.7 steps/s measured on an
# H200 (and keeps `checkpoint-<step:08d>.pt` keys in step order); 4,096 images per step per worker is 16x the
# largest batch measured (fashion-cgan, 256, on an H200). No preset has been run near either.
MAX_STEPS = 10_000_000
MAX_BATCH_SIZE = 4096


def _run_option(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    if not value:  # a new timestamped run; also what `train ls|show` parse, which must not load torch
        return value
    from models.training import run_id_problem

    problem = run_id_problem(value)
    if problem is not None:
        raise click.BadParameter(f"{value!r}: {problem}")
    return value


def store_url_option(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    """An `--out` object-store URL that `open_store` takes (s3://, file:///abs/path, memory://): click's usage
    error naming the option otherwise (exit 2), instead of the store's error read as an outage (exit 5)."""
    if value is None:
        return None
    from db.errors import StorageError
    from db.storage import LocalStore, open_store

    try:
        store = open_store(value)
    except (StorageError, ValueError) as exc:
        raise click.BadParameter(str(exc)) from None
    if isinstance(store, LocalStore):
        existing = store.root
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        if not existing.is_dir():
            raise click.BadParameter(f"{value!r}: {str(existing)!r} is not a folder")
    return value


def _writable_store_url_option(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    # `train --out`: also a local folder that can be made (nothing is created here; `train_and_register`
    # then writes and deletes a key there before Ray starts, for any store).
    from db.storage import LocalStore, open_store

    if store_url_option(ctx, param, value) is None:
        return None
    assert value is not None
    store = open_store(value)
    problem = output_folder_problem(store.root) if isinstance(store, LocalStore) else None
    if problem is not None:
        raise click.BadParameter(f"{value!r} cannot be a folder: {problem}")
    return value


def open_registry() -> sessionmaker[Session]:
    """The session factory of the configured database, with the schema brought to head."""
    data, database = DataSettings(), DatabaseSettings()
    migrate.upgrade(database.url(data))
    return make_session_factory(engine_from_settings(database, data))


def default_store_url() -> str:
    """The configured object store (`CATALOGAN_STORAGE_URL`)."""
    return StorageSettings().url(DataSettings())


@click.group("train", invoke_without_command=True)
@click.option(
    "--preset",
    default="fashion-cgan",
    show_default=True,
    help="fashion-cgan | seed-dcgan | photo-cgan-64 | tiny",
)
@click.option(
    "--data",
    "data_spec",
    default="fashion-mnist",
    show_default=True,
    help="fashion-mnist[:/path] | FOLDER | s3://bucket/prefix",
)
@click.option(
    "--workers",
    default=1,
    show_default=True,
    type=click.IntRange(min=1),
    help="Ray Train workers (DDP ranks).",
)
@click.option(
    "--steps",
    default=5000,
    show_default=True,
    type=click.IntRange(min=1, max=MAX_STEPS),
    help=f"Total optimiser steps, 1 to {MAX_STEPS:,} (a resumed run continues to this).",
)
@click.option(
    "--gpus/--no-gpus",
    default=False,
    help="One GPU per worker (NCCL) instead of CPU (gloo); refused when there are fewer GPUs than workers.",
)
@click.option(
    "--resume",
    is_flag=True,
    help="Continue the run (--run, else the latest of --name) from its last checkpoint.",
)
@click.option(
    "--out",
    "out_url",
    default=None,
    callback=_writable_store_url_option,
    help="Object store for checkpoints: s3://bucket/prefix, file:///abs/path or memory:// "
    "(default: CATALOGAN_STORAGE_URL).",
)
@click.option(
    "--name",
    default=None,
    callback=lambda _ctx, _param, value: None if value is None else model_name_option(value),
    help="Model name in the registry and the store (default: the preset): letters, digits, '.', '_', '-'.",
)
@click.option(
    "--run",
    "run_id",
    default="",
    callback=_run_option,
    help="Run id under models/<name>/ (default: a new timestamped one): letters, digits, '.', '_', '-'.",
)
@click.option(
    "--checkpoint-every",
    default=500,
    show_default=True,
    type=click.IntRange(min=1),
    help="Steps between checkpoints.",
)
@click.option(
    "--seed",
    default=None,
    type=click.IntRange(min=0, max=MAX_SEED),
    help="Override the preset's seed (0 to 2^63-1, as a job's).",
)
@click.option(
    "--log-every",
    default=50,
    show_default=True,
    type=click.IntRange(min=1),
    help="Steps between progress updates (history.jsonl lines).",
)
@click.option(
    "--eval-every",
    default=0,
    show_default=True,
    type=click.IntRange(min=0),
    help="Steps between periodic evaluations (FID_fm, per-category accuracy, sample grid, best-so-far "
    "generator); 0 = none. Fashion-MNIST categories only.",
)
@click.option(
    "--eval-samples",
    default=500,
    show_default=True,
    type=click.IntRange(min=10),
    help="Generated images per periodic evaluation, split over the categories.",
)
@click.option(
    "--init-from",
    default=None,
    metavar="MODEL",
    help="Start from this trained generator (a checkpoint file or a registry name@version) instead of random "
    "weights: fine-tuning, or longer training. Its model must be the preset's. A file that carries D (a run's "
    "checkpoint-N.pt, or a trainable checkpoint) continues G, G_ema and D together; from a generator alone D "
    "starts fresh, which can make G worse first (docs/training.md).",
)
@click.option(
    "--d-warmup-steps",
    default=0,
    show_default=True,
    type=click.IntRange(min=0),
    help="With --init-from: train D alone for the first N steps, so a fresh D catches up before G follows it.",
)
@click.option(
    "--cpus-per-worker",
    default=0,
    show_default=True,
    type=click.IntRange(min=0),
    help="CPU cores (torch threads) per worker; 0 = this machine's cores split over --workers on a local "
    "cluster, 1 on a cluster given by --ray-address.",
)
@click.option(
    "--batch-size",
    default=0,
    show_default=True,
    type=click.IntRange(min=0, max=MAX_BATCH_SIZE),
    help=f"Images per step per worker, at most {MAX_BATCH_SIZE:,} (16x the largest batch measured on an H200); "
    "0 = the preset's (fashion-cgan: 64).",
)
@click.option(
    "--precision",
    default="fp32",
    show_default=True,
    type=click.Choice(["fp32", "bf16"]),
    help="bf16: autocast to bfloat16 with channels_last (fashion-cgan at batch 128 measured 3.3x fp32's steps/s "
    "on an Intel CPU with AMX, 2.5x on an AMD EPYC with AVX512-BF16, 1.0x on an Intel Xeon with AVX512-BF16 "
    "and no AMX, and slower for tiny models: measure yours with bench/bench_train_precision.py; weights, "
    "gradients and optimiser state stay fp32).",
)
@click.option(
    "--register/--no-register",
    default=True,
    show_default=True,
    help="Record the finished run as a candidate.",
)
@click.option(
    "--evaluate/--no-evaluate",
    default=False,
    show_default=True,
    help="Measure the final generator (1,000 images per category) and store the metrics.",
)
@click.option(
    "--memorization-index/--no-memorization-index",
    default=True,
    show_default=True,
    help="Index the training set in evaluator space next to the generator (the workers' memorization gate).",
)
@click.option(
    "--ray-address",
    envvar="RAY_ADDRESS",
    default=None,
    help="Connect to this running Ray cluster (`auto` = the one on this node, host:port, ray://host:port) "
    "instead of starting a local one [env: RAY_ADDRESS].",
)
@click.option(
    "--ray-dir",
    default=None,
    type=click.Path(path_type=Path),
    help="Ray Train's own run folder (default: a temp folder).",
)
@click.option("--verbose", is_flag=True, help="Show Ray's and Ray Train's own log lines.")
@click.option(
    "--json", "as_json", is_flag=True, help="Print one JSON object per progress update, then the summary."
)
@click.pass_context
@one_line_errors
def train(
    ctx: click.Context,
    preset: str,
    data_spec: str,
    workers: int,
    steps: int,
    gpus: bool,
    resume: bool,
    out_url: str | None,
    name: str | None,
    run_id: str,
    checkpoint_every: int,
    seed: int | None,
    log_every: int,
    eval_every: int,
    eval_samples: int,
    init_from: str | None,
    d_warmup_steps: int,
    cpus_per_worker: int,
    batch_size: int,
    precision: str,
    register: bool,
    evaluate: bool,
    memorization_index: bool,
    ray_address: str | None,
    ray_dir: Path | None,
    verbose: bool,
    as_json: bool,
) -> None:
    """Train a GAN preset on Ray Train (TorchTrainer, DDP) and register it as a candidate; `ls`/`show` list runs.

    Progress comes from the run's records in the object store (models/<name>/<run>/): a live bar on a
    terminal, one line per update when piped, JSON lines with --json. Checkpoints, history.jsonl, loss
    curves and sample grids go there too; `catalogan train show RUN --follow` tails a run from any shell.

    Example:

        catalogan train --preset fashion-cgan --data fashion-mnist --workers 2 --steps 5000 --eval-every 500
    """
    if ctx.invoked_subcommand is not None:
        return
    from models.config import get_preset
    from models.progress_view import ProgressView, choose_mode, summary_text
    from models.training import TrainRequest
    from models.training_run import TrainOptions, train_and_register

    get_preset(preset)  # fail fast on a typo, before Ray starts
    init_bytes: bytes | None = None
    if init_from:
        from models.cli_evaluate import read_model_bytes

        init_bytes, _ = read_model_bytes(init_from, param_hint="--init-from")
    request = TrainRequest(
        preset=preset,
        data=data_spec,
        steps=steps,
        out_url=out_url or default_store_url(),
        name=name or preset,
        run=run_id,
        workers=workers,
        use_gpu=gpus,
        checkpoint_every=checkpoint_every,
        resume=resume,
        seed=seed,
        log_every=log_every,
        eval_every=eval_every,
        eval_samples=eval_samples,
        init_from=init_from or "",
        d_warmup_steps=d_warmup_steps,
        cpus_per_worker=cpus_per_worker,
        batch_size=batch_size,
        precision=precision,
    )
    options = TrainOptions(
        init_checkpoint=init_bytes,
        evaluate=evaluate,
        register=register,
        memorization_index=memorization_index,
        ray_address=ray_address or None,
        ray_dir=ray_dir,
        verbose=verbose,
    )
    view = ProgressView(steps, choose_mode(as_json))
    previous = signal.signal(signal.SIGTERM, _stop_on_sigterm)
    try:
        outcome = train_and_register(
            request, options, registry=open_registry, on_line=view.line, on_status=view.note
        )
    except KeyboardInterrupt:
        view.close()
        click.echo("stopped; `catalogan train ls` shows the run and `train show` how to resume it", err=True)
        ctx.exit(130)
    finally:
        view.close()
        signal.signal(signal.SIGTERM, previous)
    if as_json:
        click.echo(json.dumps({"event": "summary", **outcome.to_dict()}))
    else:
        click.echo(summary_text(outcome.to_dict()))


def _stop_on_sigterm(_signum: int, _frame: object) -> None:
    # `kill PID` stops a run as Ctrl-C does: recorded as `stopped`, resumable.
    raise KeyboardInterrupt


# `train ls` and `train show`: the store a run is read from, checked by click (exit 2 naming --out).
_read_out_option = click.option(
    "--out",
    "out_url",
    default=None,
    callback=store_url_option,
    help="Object store to read (default: CATALOGAN_STORAGE_URL).",
)


@train.command("ls")
@click.option("--name", default=None, help="Only runs of this model name.")
@_read_out_option
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list.")
@one_line_errors
def train_ls(name: str | None, out_url: str | None, as_json: bool) -> None:
    """List training runs recorded in the object store: status, step, last metrics.

    A run whose driver died without a word (killed, host lost) shows as failed; `train show` gives its
    resume command.

    Example:

        catalogan train ls --name fashion-cgan
    """
    from db.storage import open_store
    from models.progress_view import aligned
    from models.runs import list_runs

    views = list_runs(open_store(out_url or default_store_url()), name)
    if as_json:
        click.echo(json.dumps([view.to_dict() for view in views], indent=2))
        return
    rows = [
        [
            f"{view.name}/{view.run}",
            view.status.value,
            f"{view.step}/{view.steps if view.steps is not None else '?'}",
            view.updated_at or "-",
            _last_metrics(view.last),
        ]
        for view in views
    ]
    click.echo(aligned(rows, ["run", "status", "step", "updated", "last"]) if rows else "no training runs")


def _last_metrics(last: dict[str, Any] | None) -> str:
    if not last:
        return "-"
    return " ".join(f"{key} {float(last[key]):.3f}" for key in ("d_loss", "g_loss", "fid_fm") if key in last)


@train.command("show")
@click.argument("run_ref", metavar="RUN")
@click.option("--follow", is_flag=True, help="Print each new progress update until the run ends.")
@_read_out_option
@click.option(
    "--json", "as_json", is_flag=True, help="Print JSON (with --follow: one object per update first)."
)
@one_line_errors
def train_show(run_ref: str, follow: bool, out_url: str | None, as_json: bool) -> None:
    """Show one run (NAME/RUN, or RUN when one model has it): status, metrics, pictures, resume command.

    Example:

        catalogan train show fashion-cgan/run-20261204-101500 --follow
    """
    from db.storage import open_store
    from models.progress_view import ProgressView, aligned, metric_rows
    from models.runs import RunStatus, follow_history, parse_run_ref, view_run

    store = open_store(out_url or default_store_url())
    name, run = parse_run_ref(run_ref, store)
    view = view_run(store, name, run)
    if follow and view.status is RunStatus.RUNNING:
        progress = ProgressView(view.steps, "json" if as_json else "lines")
        for line in follow_history(
            store, name, run, done=lambda: view_run(store, name, run).status is not RunStatus.RUNNING
        ):
            progress.line(line)
        view = view_run(store, name, run)
    if as_json:
        click.echo(json.dumps(view.to_dict(), indent=2 if not follow else None))
        return
    rows = [
        ["run", f"{view.name}/{view.run}"],
        ["status", view.status.value + (f" ({view.reason})" if view.reason else "")],
        ["step", f"{view.step}/{view.steps if view.steps is not None else '?'}"],
        ["updated", view.updated_at or "-"],
    ]
    if view.record.get("registered"):
        rows.append(["registered", str(view.record["registered"])])
    rows += [[f"last {key}", value] for key, value in metric_rows(view.last or {})]
    if view.best:
        rows.append(["best", f"step {view.best['step']}, FID_fm {float(view.best['fid_fm']):.4g}"])
    rows += [[label, uri] for label, uri in view.files.items()]
    if view.resume_command:
        rows.append(["resume with", view.resume_command])
    click.echo(aligned(rows))
