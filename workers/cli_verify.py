"""`catalogan verify FILE [--regenerate] [--json]` — loaded lazily by the root command (regenerate imports torch)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from db.cli_support import ExitCode, one_line_errors


def _regenerate_report(data: bytes, device: str | None, backend: str | None, graph: str | None) -> Any:
    """Verify with regeneration against the registry named by `CATALOGAN_*` (the embedded stack by default)."""
    from db.engine import engine_from_settings, make_session_factory
    from db.pipeline_settings import WorkerSettings
    from db.settings import DatabaseSettings, DataSettings, StorageSettings
    from db.storage import open_store
    from workers.context import resolve_device
    from workers.generator_cache import GeneratorCache
    from workers.verification import verify_file

    data_settings = DataSettings()
    engine = engine_from_settings(DatabaseSettings(), data_settings)
    try:
        store = open_store(StorageSettings().url(data_settings))
        generators = GeneratorCache(
            store, device=resolve_device(device or WorkerSettings().device), max_entries=1
        )
        return verify_file(
            data,
            regenerate=True,
            session_factory=make_session_factory(engine),
            generators=generators,
            backend=backend,
            graph=graph,
        )
    finally:
        engine.dispose()


def _print_text(path: Path, report: Any) -> None:
    stated = report.provenance
    sku = f", sku {stated['sku']}" if stated["sku"] else ""
    redraw = f", redraw {stated['redraw']}" if stated["redraw"] else ""
    click.echo(
        f"{path}: {report.output_format}, {report.digital_source_type.rsplit('/', 1)[-1]}, "
        f"model {stated['model_version']} (checkpoint {stated['checkpoint_sha256'][:12]}), job {stated['job_id']}, "
        f"index {stated['index']}, seed {stated['seed']}, category {stated['category']}{sku}{redraw}"
    )
    if report.regenerated_with:
        click.echo(f"regenerated with {report.regenerated_with}")
    if report.matches is True:
        click.echo("regenerated: matches bit for bit")
    elif report.comparable is False:
        click.echo(f"regenerated: NOT comparable — {report.reason}")
    elif report.matches is False:
        click.echo(f"regenerated: NOT matching — {report.reason}")


@click.command("verify")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--regenerate",
    is_flag=True,
    help="Recompute the image from the registry (SQL + object store) and compare bit for bit.",
)
@click.option(
    "--device",
    default=None,
    help="Where to regenerate: cpu, cuda, auto [default: CATALOGAN_DEVICE]. Use the device kind that made it.",
)
@click.option(
    "--backend",
    default=None,
    help="Regenerate with this inference backend instead of the one the file records (eager).",
)
@click.option(
    "--graph",
    type=click.Choice(["plain", "folded"]),
    default=None,
    help="Regenerate with this graph instead of the one the file records (plain: the generator as trained; "
    "folded: its upsampling folded into transposed convolutions, a CPU worker's default).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object.")
@one_line_errors
def verify(
    file: Path, regenerate: bool, device: str | None, backend: str | None, graph: str | None, as_json: bool
) -> None:
    """Read the provenance a generated PNG/WebP carries; with --regenerate, prove it bit for bit.

    A file from a truncation, variation or interpolation job records its latent recipe (ψ, source image,
    strength, frame); --regenerate recomputes it from that recipe, sources included.

    Regeneration uses the inference backend, device kind, dtype, compute batch and graph the file records and
    says which it used. Exit 0 when the provenance is readable (and, with --regenerate, the recomputed file is
    identical); exit 8 (NOT_VERIFIED) when the file differs from what its model version produces, or carries
    no provenance (metadata stripped); exit 9 (NOT_COMPARABLE) when it differs but was regenerated on another
    device kind, backend or graph than made it (e.g. a CUDA bf16 file on a CPU): not evidence of tampering;
    exit 3 when its model version is not in the registry.

    Example:

        catalogan verify out/sneaker/00000003.png --regenerate --json
    """
    from workers.errors import ProvenanceError
    from workers.verification import read_image_file, verify_file

    try:
        data = read_image_file(file)  # refuses a file larger than any catalogan image before reading it
        report = _regenerate_report(data, device, backend, graph) if regenerate else verify_file(data)
    except ProvenanceError as exc:
        click.echo(f"Error: {file}: {exc}", err=True)
        sys.exit(ExitCode.NOT_VERIFIED)
    if as_json:
        click.echo(json.dumps({"file": str(file), **report.to_dict()}, sort_keys=True))
    else:
        _print_text(file, report)
    if report.matches is False:
        sys.exit(ExitCode.NOT_COMPARABLE if report.comparable is False else ExitCode.NOT_VERIFIED)
