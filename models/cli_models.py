"""`catalogan models list|show|promote|retire|restore|register|register-default`: the model registry from the CLI.

Imported lazily by the root command; torch is imported only by `models register` (to read and measure the
checkpoint), so `catalogan models list` starts without it. Every command that reads the registry first brings
the schema to head and, when no `fashion-cgan` version exists yet, registers the shipped one (the generator
only: its memorization index is built by the first `catalogan generate`, or by `models register-default`), so
a fresh folder lists the shipped model and `catalogan evaluate fashion-cgan` works at once.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
from sqlalchemy.orm import Session, sessionmaker

from db import migrate
from db.cli_output import json_option, print_json, print_table
from db.cli_support import model_name_option, one_line_errors
from db.engine import engine_from_settings, make_session_factory
from db.errors import InvalidTransitionError, NotFoundError
from db.settings import DatabaseSettings, DataSettings, StorageSettings
from db.status import ModelVersionStatus
from db.storage import open_store
from db.tables import ModelVersion
from models.registry import (
    PromotionGates,
    describe,
    get_version,
    list_versions,
    promote_version,
    register_version,
    restore_version,
    retire_version,
)

COLUMNS = ("ref", "status", "preset", "conditional_accuracy", "cas", "fid_fm", "created_at")
DEFAULT_REGISTER_SAMPLES = 1000  # per category, as `catalogan evaluate` measures by default
REGISTERED_PREFIX = "models/{name}/registered/{sha16}/generator.pt"  # where `models register` stores a file


def open_registry() -> sessionmaker[Session]:
    """The configured registry at the newest schema; the shipped model is registered (generator only) when no
    version of its name exists yet — a registry with its own fashion-cgan versions is left as it is."""
    from models.default_model import DEFAULT_MODEL_NAME, ensure_default_model

    data, database = DataSettings(), DatabaseSettings()
    migrate.upgrade(database.url(data))
    factory = make_session_factory(engine_from_settings(database, data))
    if not list_versions(factory, DEFAULT_MODEL_NAME):
        ensure_default_model(factory, open_store(StorageSettings().url(data)), index=None)
    return factory


def model_ref_argument(_ctx: click.Context, param: click.Parameter, value: str) -> str:
    """A `NAME` / `NAME@VERSION` argument checked before the registry is opened (a bad one changes nothing):
    click's usage error (exit 2) naming the reference and the rule otherwise."""
    from db.job_specs import split_model_ref

    try:
        split_model_ref(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param=param) from None
    return value


def exact_model_ref_argument(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """A `NAME@VERSION` argument, for the commands that change one version's status: a bare NAME means "its
    production version" elsewhere, and `models retire NAME` retired production without the operator ever
    naming which version — so the version is required here (click's usage error, exit 2, before the registry
    is opened)."""
    from db.job_specs import split_model_ref

    model_ref_argument(ctx, param, value)
    name, version = split_model_ref(value)
    if version is None:
        raise click.BadParameter(
            f"{value!r}: give NAME@VERSION, not a bare name (`catalogan models list --name {name}` lists "
            "its versions)",
            param=param,
        )
    return value


def _list_name_option(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    return None if value is None else model_name_option(value)


def _row(row: ModelVersion) -> dict[str, Any]:
    metrics = row.metrics or {}
    shown = {
        key: round(float(metrics[key]), 4)
        for key in ("conditional_accuracy", "cas", "fid_fm")
        if isinstance(metrics.get(key), int | float)
    }
    return {
        "ref": f"{row.name}@{row.version}",
        "status": row.status.value,
        "preset": row.preset,
        **shown,
        "created_at": row.created_at,
    }


@click.group("models")
def models_group() -> None:
    """List, inspect, register, promote, retire and restore generator versions.

    Example:

        catalogan models promote fashion-cgan@2
    """


@models_group.command("list")
@click.option(
    "--name",
    default=None,
    callback=_list_name_option,
    help="Only this model name (exit 3 when it has no version).",
)
@json_option
@one_line_errors
def list_command(name: str | None, as_json: bool) -> None:
    """List registered model versions (the shipped fashion-cgan is always there).

    Example:

        catalogan models list --format tsv
    """
    rows = list_versions(open_registry(), name)
    if name is not None and not rows:
        # An empty listing read as "that model has no versions yet" when the name was a typo.
        raise NotFoundError(
            f"model {name!r} has no registered version (`catalogan models list` shows every name)"
        )
    if as_json:
        print_json([describe(row) for row in rows])
    else:
        print_table([_row(row) for row in rows], COLUMNS, title="models")


@models_group.command("show")
@click.argument("ref", callback=model_ref_argument)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object.")
@one_line_errors
def show_command(ref: str, as_json: bool) -> None:
    """Show one version: NAME (its production version) or NAME@VERSION.

    Example:

        catalogan models show fashion-cgan --json
    """
    data = describe(get_version(open_registry(), ref))
    if as_json:
        print_json(data)
        return
    for key, value in data.items():
        click.echo(f"{key:18} {json.dumps(value) if isinstance(value, dict | list) else value}")


@models_group.command("promote")
@click.argument("ref", callback=model_ref_argument)
@click.option("--force", is_flag=True, help="Promote even below the metric gates.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object.")
@one_line_errors
def promote_command(ref: str, force: bool, as_json: bool) -> None:
    """Make NAME@VERSION the production version of NAME (metric-gated; see CATALOGAN_GATE_*).

    Example:

        catalogan models promote fashion-cgan@3
    """
    factory = open_registry()
    try:
        row = promote_version(factory, ref, gates=PromotionGates(), force=force)
    except InvalidTransitionError as exc:
        if get_version(factory, ref).status is ModelVersionStatus.RETIRED:
            raise InvalidTransitionError(
                f"{exc} (restore it first: catalogan models restore {ref})"
            ) from None
        raise
    click.echo(
        json.dumps(describe(row), indent=2) if as_json else f"{row.name}@{row.version} is now production"
    )


@models_group.command("retire")
@click.argument("ref", callback=exact_model_ref_argument)
@click.option(
    "--yes",
    is_flag=True,
    help="Retire it even when it is the production version (jobs naming the model then fail until another "
    "version is promoted).",
)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object.")
@one_line_errors
def retire_command(ref: str, yes: bool, as_json: bool) -> None:
    """Retire NAME@VERSION (new jobs refuse it; finished images stay); `models restore` undoes it.

    The production version needs --yes: without it, jobs naming just the model have no version to run.

    Example:

        catalogan models retire fashion-cgan@1
    """
    factory = open_registry()
    if not yes and get_version(factory, ref).status is ModelVersionStatus.PRODUCTION:
        raise click.UsageError(
            f"{ref} is the production version: jobs naming {ref.partition('@')[0]!r} would have none; "
            "promote another version first, or give --yes"
        )
    row = retire_version(factory, ref)
    click.echo(json.dumps(describe(row), indent=2) if as_json else f"{row.name}@{row.version} is now retired")


@models_group.command("restore")
@click.argument("ref", callback=exact_model_ref_argument)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object.")
@one_line_errors
def restore_command(ref: str, as_json: bool) -> None:
    """Make a retired NAME@VERSION a candidate again, to promote it back (`models promote`, metric-gated).

    Example:

        catalogan models restore fashion-cgan@1 && catalogan models promote fashion-cgan@1
    """
    row = restore_version(open_registry(), ref)
    click.echo(
        json.dumps(describe(row), indent=2) if as_json else f"{row.name}@{row.version} is now a candidate"
    )


@models_group.command("register")
@click.argument("checkpoint", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--name",
    required=True,
    callback=lambda _ctx, _param, value: model_name_option(value),
    help="Model name in the registry (a new one, or a new version of one): letters, digits, '.', '_', '-'.",
)
@click.option(
    "--promote",
    is_flag=True,
    help="Make it the production version if its metrics pass the gates (CATALOGAN_GATE_*), as for trained runs.",
)
@click.option(
    "--samples",
    type=click.IntRange(min=10),
    default=DEFAULT_REGISTER_SAMPLES,
    show_default=True,
    help="Images per category for the metrics the gates read.",
)
@click.option(
    "--evaluate/--no-evaluate",
    default=True,
    show_default=True,
    help="Measure the checkpoint with the shipped evaluator before registering (needed by --promote).",
)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object.")
@one_line_errors
def register_command(
    checkpoint: Path, name: str, promote: bool, samples: int, evaluate: bool, as_json: bool
) -> None:
    """Register a generator checkpoint trained elsewhere as a new candidate version of NAME.

    The checkpoint is read and checked (format version, weights matching its config), measured with the shipped
    evaluator (FID_fm, conditional accuracy, CAS, ... on real Fashion-MNIST test), copied into the object store
    and recorded as a candidate. With --promote it then goes through the same metric gates as a trained run's
    `models promote`: below a gate it stays a candidate and the command exits 4 naming the gate.

    Example:

        catalogan models register run-42/generator.pt --name fashion-cgan --promote --samples 200
    """
    from models.checkpoint import checkpoint_file_error, read_checkpoint_file, sha256_hex
    from models.errors import CheckpointError
    from models.inference import load_generator

    if promote and not evaluate:
        raise click.UsageError("--promote needs the metrics: drop --no-evaluate")
    data, payload = read_checkpoint_file(checkpoint)  # before anything is written
    try:
        load_generator(data)  # the weights must match the config
    except CheckpointError as exc:
        raise checkpoint_file_error(str(checkpoint), exc) from exc
    metrics: dict[str, Any] = {}
    if evaluate:
        metrics = measure(data, samples)
    sha = sha256_hex(data)
    factory = open_registry()
    store = open_store(StorageSettings().url(DataSettings()))
    key = REGISTERED_PREFIX.format(name=name, sha16=sha[:16])
    if not store.exists(key):
        store.put(key, data)
    model_config = dict(payload["model_config"])
    row = register_version(
        factory,
        name=name,
        preset=str(payload.get("preset", "")),
        checkpoint_uri=store.uri(key),
        checkpoint_sha256=sha,
        model_config=model_config,
        data_fingerprint=str(payload.get("data_fingerprint", "")),
        metrics={
            **metrics,
            "registered_from": checkpoint.name,
            "samples_per_class": samples if evaluate else 0,
        },
    )
    ref = f"{row.name}@{row.version}"
    if promote:
        row = promote_version(factory, ref, gates=PromotionGates())
    if as_json:
        print_json(describe(row))
    else:
        click.echo(f"{ref} registered ({row.status.value})")


def measure(data: bytes, samples: int) -> dict[str, Any]:
    """The metrics of a generator checkpoint, as `catalogan evaluate --record` measures and records them (the
    gates' input): the scalars and the per-category ones that `CATALOGAN_GATE_MIN_CATEGORY_ACCURACY*` read."""
    from models.evaluation import evaluate_generator, real_test_reference
    from models.inference import load_generator
    from models.metrics.cas import CasConfig
    from models.training_run import recorded_metrics

    report = evaluate_generator(
        load_generator(data),
        samples,
        0,
        source="register",
        reference=real_test_reference(),
        cas_config=CasConfig(),
    ).to_dict()
    return recorded_metrics(report)


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

    Every `models` command registers the generator by itself; this one also builds its memorization index from
    Debian's Fashion-MNIST when installed (a minute or more of CPU, once). Run it once against a deployment
    (PostgreSQL + S3): docker compose does, before the API starts.

    Example:

        catalogan models register-default --json
    """
    from models.default_model import FULL_INDEX, ensure_default_model

    data, database = DataSettings(), DatabaseSettings()
    migrate.upgrade(database.url(data))
    row = ensure_default_model(
        make_session_factory(engine_from_settings(database, data)),
        open_store(StorageSettings().url(data)),
        index=None if no_index else FULL_INDEX,
        notify=lambda message: click.echo(message, err=True),
    )
    click.echo(
        json.dumps(describe(row), indent=2)
        if as_json
        else f"{row.name}@{row.version} registered ({row.status.value})"
    )
