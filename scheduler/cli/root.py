"""Root of the `catalogan` command: global options, `version`, and the lazily-loaded groups."""

from __future__ import annotations

import json
from importlib.metadata import PackageNotFoundError, version

import click

from scheduler.cli.lazy import LazyGroup

# name -> "module:command". Groups that import torch are only imported when invoked.
LAZY_SUBCOMMANDS: dict[str, str] = {
    "db": "scheduler.cli.db_commands:db",
    "worker": "workers.cli:worker",
    "generate": "workers.cli:generate",
    "beat": "scheduler.cli.beat_commands:beat",
    "serve": "scheduler.cli.serve:serve",
    "tenants": "scheduler.cli.tenants:tenants",
    "keys": "scheduler.cli.keys:keys",
    "jobs": "scheduler.cli.jobs:jobs",
    "workers": "scheduler.cli.workers:workers",
    "dlq": "scheduler.cli.dlq:dlq",
    "evaluator": "models.cli_evaluate:evaluator",
    "evaluate": "models.cli_evaluate:evaluate",
    "train": "models.cli:train",
    "models": "models.cli_models:models_group",
    "verify": "workers.cli_verify:verify",
}
# What `catalogan --help` shows for each lazy command, without importing it (that would import torch). A group's
# line names every one of its subcommands; a command's line is its own short help (the first sentence of its
# docstring) — tests/scheduler/test_cli_help.py holds both to that, so a new subcommand or a reworded
# docstring cannot leave this list behind.
LAZY_HELP: dict[str, str] = {
    "db": "The SQL schema (Alembic migrations): upgrade, downgrade, current, check.",
    "worker": "Run generation workers (Celery, solo pool) until SIGTERM; logs are JSON lines on stderr.",
    "generate": (
        "Generate images with a real job and export them to a folder, with a contact sheet per category."
    ),
    "beat": "Run the periodic steps: the reaper, the webhook outbox and retention.",
    "serve": (
        "Serve the HTTP API and the web console at /console/ (FastAPI under uvicorn); settings come from "
        "CATALOGAN_* variables."
    ),
    "tenants": "Tenants (customer accounts): create, set, ls, rotate-webhook-secret.",
    "keys": "API keys: create, ls, revoke.",
    "jobs": "Jobs through the API: submit, ls, show, watch, cancel, retry, delete, export, shards.",
    "workers": "Show live workers (Celery ping and live chunk leases) and the depth of each queue.",
    "dlq": "Quarantined chunks (those that failed every attempt): ls, retry.",
    "evaluator": "The evaluator CNN whose features the GAN metrics use: train.",
    "evaluate": "Measure a generator against real Fashion-MNIST test in the evaluator's feature space.",
    "train": "Train a GAN preset on Ray Train (DDP workers, checkpoints to the object store); ls, show: its runs.",
    "models": (
        "Generator versions, the shipped one included: list, show, register, register-default, promote, "
        "retire, restore."
    ),
    "verify": "Read the provenance a generated PNG/WebP carries; with --regenerate, prove it bit for bit.",
}


def package_version() -> str:
    """The installed version of the `catalogan` distribution."""
    try:
        return version("catalogan")
    except PackageNotFoundError:  # running from a source tree without `pip install -e .`
        return "0+unknown"


@click.group(
    cls=LazyGroup,
    lazy_subcommands=LAZY_SUBCOMMANDS,
    lazy_help=LAZY_HELP,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110},
)
def cli() -> None:
    """catalogan — bulk e-commerce product images from class-conditional GANs.

    Settings come from CATALOGAN_* environment variables (see docs/configuration.md);
    with none set, everything runs embedded under ./catalogan-data/.

    Example:

        catalogan generate --category sneaker=16 --seed 7 --out out/
    """


@cli.command("version")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object.")
def version_command(as_json: bool) -> None:
    """Print the catalogan version.

    Example:

        catalogan version --json
    """
    if as_json:
        click.echo(json.dumps({"version": package_version()}))
    else:
        click.echo(f"catalogan {package_version()}")


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="catalogan")
