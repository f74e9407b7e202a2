"""`catalogan evaluator train` and `catalogan evaluate MODEL`: thin commands over models.evaluator / evaluation.

Loaded lazily by the root CLI (it imports torch).
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from db.cli_support import one_line_errors, output_file
from db.job_specs import MAX_SEED
from models.data.fashion_mnist import DEFAULT_ROOT

if TYPE_CHECKING:
    from models.evaluation import EvaluationReport


def device_option(_ctx: click.Context, param: click.Parameter, value: str) -> str:
    """A `--device` for torch: `cpu`, `cuda` or `cuda:N`, a CUDA one only where torch sees that GPU; click's
    usage error (exit 2) naming the option otherwise, before any data is read or any epoch runs."""
    if value == "cpu":
        return value
    match = re.fullmatch(r"cuda(?::([0-9]{1,4}))?", value)
    if match is None:
        raise click.BadParameter(f"{value!r}: must be cpu, cuda or cuda:N", param=param)
    import torch

    if not torch.cuda.is_available():
        raise click.BadParameter(f"{value!r}: no CUDA device is visible (use cpu)", param=param)
    index = int(match.group(1) or 0)
    if index >= torch.cuda.device_count():
        raise click.BadParameter(
            f"{value!r}: there is no CUDA device {index} ({torch.cuda.device_count()} visible)", param=param
        )
    return value


def weights_file_option(_ctx: click.Context, param: click.Parameter, value: Path | None) -> Path | None:
    """`evaluator train --out`: a local file path whose nearest existing folder is writable (a missing folder
    is created at the end, as `save_evaluator` does), and neither it nor its `.sha256` beside it a folder;
    checked before any epoch runs, without creating anything."""
    if value is None:
        return None
    from models.evaluator import sha256_path_for

    if re.match(r"[A-Za-z][A-Za-z0-9+.-]+:/", str(value)):
        raise click.BadParameter(f"{str(value)!r} looks like a URL: give a local path", param=param)
    for path in (value, sha256_path_for(value)):
        if path.is_dir():
            raise click.BadParameter(f"{str(path)!r} is a folder, not a file", param=param)
    existing = value.absolute().parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise click.BadParameter(
            f"{str(value)!r}: {str(existing)!r} is not a writable folder to write it in", param=param
        )
    return value


@click.group("evaluator")
def evaluator() -> None:
    """Train or inspect the evaluator CNN whose features the GAN metrics use.

    Example:

        catalogan evaluator train --epochs 15
    """


@evaluator.command("train")
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="Training epochs [default: 15].")
@click.option(
    "--seed", type=int, default=0, show_default=True, help="Seed for init, shuffling, augmentation."
)
@click.option(
    "--data",
    "data_root",
    type=click.Path(file_okay=False, path_type=Path),
    default=DEFAULT_ROOT,
    show_default=True,
    help="Folder with the Fashion-MNIST IDX .gz files.",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    callback=weights_file_option,
    help="Where to write the state_dict (+ .sha256 beside it) [default: the shipped models/weights/evaluator-fashion.pt].",
)
@click.option(
    "--device",
    default="cpu",
    show_default=True,
    callback=device_option,
    help="Torch device to train on: cpu, cuda or cuda:N (`cuda` for a GPU); the recipe is the same.",
)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary at the end.")
@one_line_errors
def train_command(
    epochs: int | None, seed: int, data_root: Path, out: Path | None, device: str, as_json: bool
) -> None:
    """Train the evaluator CNN on Fashion-MNIST train and report its test accuracy.

    Example:

        nice -n 10 catalogan evaluator train --epochs 15 --json
    """
    from dataclasses import replace

    from models.data.fashion_mnist import load_fashion_mnist
    from models.evaluator import (
        DEFAULT_WEIGHTS_PATH,
        EvaluatorTrainingConfig,
        save_evaluator,
        train_evaluator,
    )

    config = EvaluatorTrainingConfig(seed=seed, device=device)
    if epochs is not None:
        config = replace(config, epochs=epochs)
    out = out or DEFAULT_WEIGHTS_PATH
    train_images, train_labels = load_fashion_mnist(data_root, "train")
    test_images, test_labels = load_fashion_mnist(data_root, "test")

    def report(epoch: int, loss: float, accuracy: float, seconds: float) -> None:
        click.echo(
            f"epoch {epoch}/{config.epochs}  train loss {loss:.4f}  test accuracy {accuracy:.4f}  {seconds:.1f} s",
            err=as_json,
        )

    started = time.perf_counter()
    trained = train_evaluator(train_images, train_labels, test_images, test_labels, config, on_epoch=report)
    digest = save_evaluator(trained.model, out)
    summary = {
        "weights": str(out),
        "sha256": digest,
        "test_accuracy": trained.test_accuracy,
        "epochs": config.epochs,
        "seed": config.seed,
        "device": config.device,
        "seconds_per_epoch": trained.seconds_per_epoch,
        "test_accuracy_per_epoch": trained.test_accuracy_per_epoch,
        "seconds_per_epoch_mean": sum(trained.seconds_per_epoch) / len(trained.seconds_per_epoch),
        "seconds_total": time.perf_counter() - started,
    }
    if as_json:
        click.echo(json.dumps(summary, indent=2))
    else:
        click.echo(f"test accuracy {trained.test_accuracy:.4f}; wrote {out} (sha256 {digest})")


def read_model_bytes(model: str, param_hint: str = "MODEL") -> tuple[bytes, str]:
    """Checkpoint bytes and a display name for MODEL: a checkpoint file path, or a registry `name[@version]`.

    A file that is not a catalogan checkpoint is a `CheckpointFileError` (bad input, exit 2) naming it, and
    the option when `param_hint` is one (`--init-from x.pt: not a catalogan checkpoint (...)`).
    """
    from models.checkpoint import read_checkpoint_file

    path = Path(model)
    if path.is_file():
        data, _ = read_checkpoint_file(path, f"{param_hint} {model}" if param_hint.startswith("-") else model)
        return data, path.name
    if any(sep in model for sep in ("/", "\\")) or model.endswith((".pt", ".ckpt")):
        raise click.BadParameter(f"{model}: no such checkpoint file", param_hint=param_hint)
    return registry_checkpoint_bytes(model)


def registry_checkpoint_bytes(reference: str) -> tuple[bytes, str]:
    """Resolve `name[@version]` in the model registry and read its checkpoint from the object store."""
    from db.job_specs import split_model_ref
    from db.settings import StorageSettings
    from models.cli_models import open_registry
    from models.registry import get_version

    split_model_ref(reference)  # a malformed reference is bad input before the registry is opened (or made)
    # open_registry: the schema at head and the shipped fashion-cgan registered, as in a fresh folder
    row = get_version(open_registry(), reference)
    return read_checkpoint_uri(row.checkpoint_uri, StorageSettings().url()), f"{row.name}@{row.version}"


def read_checkpoint_uri(uri: str, store_url: str) -> bytes:
    """Bytes of a checkpoint URI: a key of the configured store, or a full URI of any store."""
    from db.errors import StorageError
    from db.storage import open_store

    base = store_url.rstrip("/") + "/"
    if uri.startswith(base) or "://" not in uri:
        return open_store(store_url).get(uri.removeprefix(base))
    parent, _, name = uri.rstrip("/").rpartition("/")
    if not name or "://" not in parent:
        raise StorageError(f"checkpoint {uri!r}: not an object URI")
    return open_store(parent).get(name)


@click.command("evaluate")
@click.argument("model")
@click.option(
    "--samples",
    type=click.IntRange(min=10),
    default=1000,
    show_default=True,
    help="Generated images per category (the calibration row uses as many real train images).",
)
@click.option(
    "--seed",
    type=click.IntRange(min=0, max=MAX_SEED),
    default=0,
    show_default=True,
    help="Job seed for the latents and subsets (0 to 2^63-1, as a job's).",
)
@click.option(
    "--no-cas", is_flag=True, help="Skip CAS (it trains a small classifier on the generated images)."
)
@click.option("--no-calibration", is_flag=True, help="Skip the real-train-vs-real-test calibration row.")
@click.option(
    "--data",
    "data_root",
    type=click.Path(file_okay=False, path_type=Path),
    default=DEFAULT_ROOT,
    show_default=True,
    help="Folder with the Fashion-MNIST IDX .gz files (the real reference).",
)
@click.option(
    "--memorization",
    is_flag=True,
    help="Also check for copies of training images (embeds all 60,000 train images first).",
)
@click.option(
    "--closest-pairs",
    "closest_pairs",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    callback=output_file,
    help="With --memorization: write a PNG of the 16 generated images nearest the training set (top) over "
    "their nearest training images (bottom).",
)
@click.option(
    "--record",
    is_flag=True,
    help="Store the metrics in the registry row of MODEL (a `name@version` reference) for promotion gates.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON instead of a table.")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    callback=output_file,
    help="Also write the JSON report to this file.",
)
@one_line_errors
def evaluate(
    model: str,
    samples: int,
    seed: int,
    no_cas: bool,
    no_calibration: bool,
    data_root: Path,
    memorization: bool,
    closest_pairs: Path | None,
    record: bool,
    as_json: bool,
    out: Path | None,
) -> None:
    """Measure a generator against real Fashion-MNIST test in the evaluator's feature space.

    MODEL is a checkpoint file, or a registry reference `name` (the promoted version) or `name@version`.
    Metrics: FID_fm and KID (lower is better), precision / recall, conditional accuracy, CAS (higher is
    better), intra-class SSIM (high means mode collapse). The calibration row scores real train images.
    Per category, a second table: the generated images' conditional accuracy beside the evaluator's
    accuracy on real images of the category, their ratio, and the category's FID_fm, precision and
    recall (also in --json, and what --record stores for the per-category promotion gates).

    Example:

        catalogan evaluate fashion-cgan --samples 1000 --out report.json
    """
    if closest_pairs is not None and not memorization:
        raise click.UsageError(
            "--closest-pairs needs --memorization (the pairs come from its nearest-train search)"
        )
    from models.checkpoint import checkpoint_file_error
    from models.errors import CheckpointError
    from models.evaluation import (
        calibration_report,
        evaluate_generator,
        real_test_reference,
        real_train_features,
    )
    from models.evaluator import DEFAULT_WEIGHTS_PATH, sha256_path_for
    from models.inference import load_generator
    from models.metrics.cas import CasConfig

    data, name = read_model_bytes(model)
    from_file = Path(model).is_file()
    if record and from_file:
        raise click.BadParameter(
            "--record needs a registry reference, not a checkpoint file", param_hint="MODEL"
        )
    try:
        generator = load_generator(data)
    except CheckpointError as exc:  # weights that do not fit the file's own config
        if from_file:
            raise checkpoint_file_error(model, exc) from exc
        raise
    cas_config = None if no_cas else CasConfig()
    reference = real_test_reference(data_root)
    train_features = real_train_features(data_root) if memorization else None
    train_images = None
    if memorization and closest_pairs is not None:
        from models.data.fashion_mnist import load_fashion_mnist

        train_images = load_fashion_mnist(data_root, "train")[0]
    report = evaluate_generator(
        generator,
        samples,
        seed,
        source=name,
        reference=reference,
        cas_config=cas_config,
        train_features=train_features,
        train_images=train_images,
        closest_pairs_path=closest_pairs,
    )
    calibration = (
        None
        if no_calibration
        else calibration_report(
            samples, seed, data_root=data_root, reference=reference, cas_config=cas_config
        )
    )
    document = {
        "model": name,
        "checkpoint_sha256": generator.checkpoint_sha256,
        "evaluator_sha256": sha256_path_for(DEFAULT_WEIGHTS_PATH).read_text().split()[0],
        "samples_per_class": samples,
        "seed": seed,
        "report": report.to_dict(),
        "calibration": None if calibration is None else calibration.to_dict(),
    }
    if record:
        record_report(name, report)
    text = json.dumps(document, indent=2)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
    if as_json:
        click.echo(text)
        return
    print_report_table([r for r in (calibration, report) if r is not None])


def record_report(reference: str, report: EvaluationReport) -> None:
    """Merge the metrics measured into the registry row, where the promotion gates read them. A metric not
    measured this time (CAS under --no-cas) keeps the value the row has: merging its None erased a recorded
    CAS, and the CAS gate then refused a version it had passed."""
    from db.engine import engine_from_settings, make_session_factory
    from models.registry import record_metrics
    from models.training_run import recorded_metrics

    record_metrics(
        make_session_factory(engine_from_settings()), reference, recorded_metrics(report.to_dict())
    )


def print_report_table(reports: list[EvaluationReport]) -> None:
    """One column per report (calibration first), one row per metric, then any mode-collapse warnings."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title="catalogan evaluate — against Fashion-MNIST test, in the evaluator's feature space")
    table.add_column("metric")
    for r in reports:
        table.add_column(r.source, justify="right", overflow="fold")
    rows: list[tuple[str, Callable[[EvaluationReport], str]]] = [
        ("images", lambda r: str(r.sample_count)),
        ("FID_fm (lower is better)", lambda r: f"{r.fid_fm:.2f}"),
        ("KID ×10³ (lower is better)", lambda r: f"{r.kid * 1e3:.2f} ± {r.kid_std * 1e3:.2f}"),
        ("precision", lambda r: f"{r.precision:.3f}"),
        ("recall", lambda r: f"{r.recall:.3f}"),
        ("conditional accuracy", lambda r: f"{r.conditional_accuracy:.3f}"),
        ("CAS", lambda r: "-" if r.cas is None else f"{r.cas:.3f}"),
        ("intra-class SSIM (↑ = collapse)", lambda r: f"{r.intra_class_ssim:.3f}"),
    ]
    if any(r.memorization_copy_fraction is not None for r in reports):
        rows.append(("copies of train images", lambda r: _optional(r.memorization_copy_fraction)))
        rows.append(("nearest-train distance ratio", lambda r: _optional(r.memorization_median_ratio)))
        rows.append(("near copies (memorization gate)", lambda r: _optional(r.near_copy_rate)))
    for name, cell in rows:
        table.add_row(name, *(cell(r) for r in reports))
    console = Console()
    console.print(table)
    for r in reports:
        if r.per_class_accuracy and r.per_class_fid_fm:
            console.print(per_category_table(r))
    for r in reports:
        for warning in r.warnings:
            console.print(f"[yellow]warning[/yellow] ({r.source}): {warning}", soft_wrap=True)


def per_category_table(report: EvaluationReport) -> Any:
    """One row per category: generated conditional accuracy beside the evaluator's accuracy on real images of
    that category, and the category's own FID_fm, precision and recall."""
    from rich.table import Table

    table = Table(title=f"per category — {report.source}")
    for name in ("category", "cond. accuracy", "real accuracy", "ratio", "FID_fm", "precision", "recall"):
        table.add_column(name, justify="left" if name == "category" else "right")
    for category, accuracy in report.per_class_accuracy.items():
        real = report.real_per_class_accuracy.get(category)
        table.add_row(
            category,
            f"{accuracy:.3f}",
            _optional(real),
            "-" if not real else f"{accuracy / real:.2f}",
            _optional(report.per_class_fid_fm.get(category)),
            _optional(report.per_class_precision.get(category)),
            _optional(report.per_class_recall.get(category)),
        )
    return table


def _optional(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"
