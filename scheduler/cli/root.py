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
LAZY_HELP: dict[str, str] = {
    "db": "Create or upgrade the SQL schema (Alembic migrations).",
    "worker": "Run a generation worker (one process per GPU, Celery solo pool).",
    "generate": "Generate images with a real job and export them to a folder.",
    "beat": "Run the reaper loop: re-enqueue lost chunks, quarantine, finalize stragglers.",
    "serve": "Serve the HTTP API (uvicorn).",
    "tenants": "Create and list tenants.",
    "keys": "Create, revoke and list API keys.",
    "jobs": "List, watch, cancel, retry and export jobs (through the API).",
    "workers": "Live workers and queue depths.",
    "dlq": "Quarantined chunks: list and retry.",
    "evaluator": "Train the evaluator CNN whose features the GAN metrics use.",
    "evaluate": "Measure a generator: FID_fm, KID, precision/recall, accuracy, CAS, diversity.",
    "train": "Train a GAN preset on Ray Train (DDP workers, checkpoints to the object store).",
    "models": "List, show, register, promote and retire generator versions (the shipped one included).",
    "verify": "Read a file's provenance; with --regenerate, recompute it and compare bit for bit.",
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
