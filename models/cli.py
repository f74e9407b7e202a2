"""`catalogan train` and `catalogan models list|show|promote|retire`: thin commands over plain functions.

Imported lazily by the root command; torch and Ray are imported only inside `train`, so
`catalogan models list` starts without them.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import click
from sqlalchemy.orm import Session, sessionmaker

from db import migrate
from db.engine import engine_from_settings, make_session_factory
from db.settings import DatabaseSettings, DataSettings, StorageSettings
from db.tables import ModelVersion
from models.registry import (
    PromotionGates,
    describe,
    get_version,
    list_versions,
    promote_version,
    register_version,
    retire_version,
)
from scheduler.cli.errors import one_line_errors

RAY_ENV_DEFAULTS = {
    # Ray's memory monitor kills workers when the *machine* is near full; on a shared box that is other
    # people's memory, so it is off unless the operator sets it.
    "RAY_memory_monitor_refresh_ms": "0",
}


def open_registry() -> sessionmaker[Session]:
    """The session factory of the configured database, with the schema brought to head."""
    data, database = DataSettings(), DatabaseSettings()
    migrate.upgrade(database.url(data))
    return make_session_factory(engine_from_settings(database, data))


def start_ray(workers: int, use_gpu: bool) -> bool:
    """Start a local Ray cluster sized for `workers` unless one is running or RAY_ADDRESS names one."""
    import ray

    if ray.is_initialized():
        return False
    for key, value in RAY_ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"])
    else:
        # One CPU per worker, plus one for Ray Train's controller.
        ray.init(num_cpus=workers + 1, num_gpus=workers if use_gpu else 0, include_dashboard=False)
    return True


@click.command("train")
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
    type=click.IntRange(min=1),
    help="Total optimiser steps (a resumed run continues to this).",
)
@click.option("--gpus/--no-gpus", default=False, help="One GPU per worker (NCCL) instead of CPU (gloo).")
@click.option(
    "--resume",
    is_flag=True,
    help="Continue the run (--run, else the latest of --name) from its last checkpoint.",
)
@click.option(
    "--out", "out_url", default=None, help="Object store for checkpoints (default: CATALOGAN_STORAGE_URL)."
)
@click.option("--name", default=None, help="Model name in the registry and the store (default: the preset).")
@click.option(
    "--run", "run_id", default="", help="Run id under models/<name>/ (default: a new timestamped one)."
)
@click.option(
    "--checkpoint-every",
    default=500,
    show_default=True,
    type=click.IntRange(min=1),
    help="Steps between checkpoints.",
)
@click.option("--seed", default=None, type=int, help="Override the preset's seed.")
@click.option(
    "--log-every",
    default=50,
    show_default=True,
    type=click.IntRange(min=1),
    help="Steps between progress lines.",
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
    help="Measure the final generator and store the metrics.",
)
@click.option(
    "--memorization-index/--no-memorization-index",
    default=True,
    show_default=True,
    help="Index the training set in evaluator space next to the generator (the workers' memorization gate).",
)
@click.option(
    "--ray-dir",
    default=None,
    type=click.Path(path_type=Path),
    help="Ray Train's own run folder (default: a temp folder).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@one_line_errors
def train(
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
    register: bool,
    evaluate: bool,
    memorization_index: bool,
    ray_dir: Path | None,
    as_json: bool,
) -> None:
    """Train a GAN preset on Ray Train (TorchTrainer, DDP) and register it as a candidate.

    Full-state checkpoints, loss curves and sample grids go to models/<name>/<run>/ in the object store.

    Example:

        catalogan train --preset fashion-cgan --data fashion-mnist --workers 2 --steps 5000
    """
    import ray

    from models.config import get_preset
    from models.training import TrainRequest, fit_with_ray

    get_preset(preset)  # fail fast on a typo, before Ray starts
    data_settings = DataSettings()
    request = TrainRequest(
        preset=preset,
        data=data_spec,
        steps=steps,
        out_url=out_url or StorageSettings().url(data_settings),
        name=name or preset,
        run=run_id,
        workers=workers,
        use_gpu=gpus,
        checkpoint_every=checkpoint_every,
        resume=resume,
        seed=seed,
        log_every=log_every,
    )
    started = start_ray(workers, gpus)
    try:
        with tempfile.TemporaryDirectory(prefix="catalogan-ray-") as scratch:
            result = fit_with_ray(request, ray_dir or Path(scratch))
    finally:
        if started:
            ray.shutdown()
    summary: dict[str, Any] = {
        "name": result.name,
        "run": result.run,
        "step": result.step,
        "checkpoint_uri": result.checkpoint_uri,
        "generator_uri": result.generator_uri,
        "generator_sha256": result.generator_sha256,
        "data_fingerprint": result.data_fingerprint,
    }
    metrics: dict[str, Any] = {}
    if evaluate:
        from db.storage import open_store

        metrics = evaluate_checkpoint(open_store(request.out_url).get(result.generator_key))
        summary["metrics"] = metrics
    if register and memorization_index:
        from db.storage import open_store
        from models.config import get_preset as preset_of
        from models.memorization_index import METRICS_KEY, store_index_for_training

        config = preset_of(result.preset).model
        metrics[METRICS_KEY] = store_index_for_training(
            open_store(request.out_url), result.generator_key, data_spec, config.resolution, config.channels
        )
        summary["memorization_index"] = metrics[METRICS_KEY]["uri"]
    if register:
        row = register_version(
            open_registry(),
            name=result.name,
            preset=result.preset,
            checkpoint_uri=result.generator_uri,
            checkpoint_sha256=result.generator_sha256,
            model_config=result.model_config,
            data_fingerprint=result.data_fingerprint,
            metrics={**metrics, "steps": result.step, "run": result.run},
        )
        summary["registered"] = f"{row.name}@{row.version}"
    if as_json:
        click.echo(json.dumps(summary, indent=2))
    else:
        for key, value in summary.items():
            click.echo(f"{key:17} {value}")


def evaluate_checkpoint(data: bytes) -> dict[str, Any]:
    """Evaluate generator checkpoint bytes with the shipped evaluator; its scalar metrics."""
    from models.evaluation import evaluate_generator
    from models.inference import load_generator

    report = evaluate_generator(load_generator(data)).to_dict()
    return {k: v for k, v in report.items() if isinstance(v, int | float) and not isinstance(v, bool)}


@click.group("models")
def models_group() -> None:
    """List, inspect, promote and retire registered generator versions.

    Example:

        catalogan models promote fashion-cgan@2
    """


def _row_line(row: ModelVersion) -> str:
    metrics = row.metrics or {}
    shown = " ".join(
        f"{k}={metrics[k]:.3f}"
        for k in ("conditional_accuracy", "cas", "fid_fm")
        if isinstance(metrics.get(k), int | float)
    )
    return f"{row.name + '@' + str(row.version):24} {row.status.value:10} {row.preset:14} {shown}"


@models_group.command("list")
@click.option("--name", default=None, help="Only this model name.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list.")
@one_line_errors
def list_command(name: str | None, as_json: bool) -> None:
    """List registered model versions.

    Example:

        catalogan models list --json
    """
    rows = list_versions(open_registry(), name)
    if as_json:
        click.echo(json.dumps([describe(row) for row in rows], indent=2))
        return
    for row in rows:
        click.echo(_row_line(row))


@models_group.command("show")
@click.argument("ref")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object.")
@one_line_errors
def show_command(ref: str, as_json: bool) -> None:
    """Show one version: NAME (its production version) or NAME@VERSION.

    Example:

        catalogan models show fashion-cgan --json
    """
    data = describe(get_version(open_registry(), ref))
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    for key, value in data.items():
        click.echo(f"{key:18} {json.dumps(value) if isinstance(value, dict | list) else value}")


@models_group.command("promote")
@click.argument("ref")
@click.option("--force", is_flag=True, help="Promote even below the metric gates.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object.")
@one_line_errors
def promote_command(ref: str, force: bool, as_json: bool) -> None:
    """Make NAME@VERSION the production version of NAME (metric-gated; see CATALOGAN_GATE_*).

    Example:

        catalogan models promote fashion-cgan@3
    """
    row = promote_version(open_registry(), ref, gates=PromotionGates(), force=force)
    click.echo(
        json.dumps(describe(row), indent=2) if as_json else f"{row.name}@{row.version} is now production"
    )


@models_group.command("retire")
@click.argument("ref")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object.")
@one_line_errors
def retire_command(ref: str, as_json: bool) -> None:
    """Retire NAME@VERSION (new jobs refuse it; finished images stay).

    Example:

        catalogan models retire fashion-cgan@1
    """
    row = retire_version(open_registry(), ref)
    click.echo(json.dumps(describe(row), indent=2) if as_json else f"{row.name}@{row.version} is now retired")


@models_group.command("register-default")
@click.option(
    "--no-index",
    is_flag=True,
    help="Register the generator only, without building its memorization index (jobs skip the near-copy check).",
)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object.")
@one_line_errors
def register_default_command(no_index: bool, as_json: bool) -> None:
    """Register the shipped fashion-cgan in the configured registry and store (idempotent).

    `catalogan generate` does this by itself on the embedded default; run it once against a deployment
    (PostgreSQL + S3) so the API can serve the shipped model. The first time it also builds the model's
    memorization index from Debian's Fashion-MNIST when installed (a minute or more of CPU, once).

    Example:

        catalogan models register-default --json
    """
    from db.settings import StorageSettings
    from db.storage import open_store
    from models.default_model import FULL_INDEX, ensure_default_model

    store = open_store(StorageSettings().url(DataSettings()))
    row = ensure_default_model(
        open_registry(),
        store,
        index=None if no_index else FULL_INDEX,
        notify=lambda message: click.echo(message, err=True),
    )
    click.echo(
        json.dumps(describe(row), indent=2)
        if as_json
        else f"{row.name}@{row.version} registered ({row.status.value})"
    )
