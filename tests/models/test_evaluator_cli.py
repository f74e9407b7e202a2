"""`catalogan evaluate` and `catalogan evaluator` through the real root command."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from db.cli_support import ExitCode
from db.engine import make_engine, make_session_factory
from db.storage import open_store
from models.inference import load_generator, random_generator_checkpoint
from models.registry import get_version, register_version
from scheduler.cli.root import cli

METRICS = ("fid_fm", "kid", "precision", "recall", "conditional_accuracy", "cas", "intra_class_ssim")


@pytest.fixture
def random_checkpoint_path(tmp_path: Path) -> Path:
    """A randomly initialised `fashion-cgan` generator checkpoint file (10 categories, 32×32 gray)."""
    path = tmp_path / "random-fashion.pt"
    path.write_bytes(random_generator_checkpoint("fashion-cgan", seed=3))
    return path


def test_root_help_lists_the_commands_and_each_has_an_example() -> None:
    """Given `catalogan --help` and each command's help, the commands are listed and show an example."""
    runner = CliRunner()
    root = runner.invoke(cli, ["--help"])
    assert "evaluate " in root.output and "evaluator " in root.output
    for args in (["evaluate", "--help"], ["evaluator", "train", "--help"]):
        result = runner.invoke(cli, args)
        assert result.exit_code == 0, result.output
        assert "Example:" in result.output


@pytest.mark.slow
def test_evaluate_a_checkpoint_file_prints_every_metric_as_json(
    random_checkpoint_path: Path, tmp_path: Path
) -> None:
    """Given a random generator, `evaluate --samples 20 --json --out` reports every metric and a calibration row."""
    out = tmp_path / "report.json"
    result = CliRunner().invoke(
        cli, ["evaluate", str(random_checkpoint_path), "--samples", "20", "--json", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert json.loads(out.read_text()) == document
    assert document["samples_per_class"] == 20
    assert len(document["evaluator_sha256"]) == 64
    for row in (document["report"], document["calibration"]):
        assert all(isinstance(row[name], float) for name in METRICS), row
        assert row["sample_count"] == 200
    # A random generator is useless, the real train images are not: the calibration row says what good is.
    assert document["report"]["conditional_accuracy"] < 0.5
    assert document["calibration"]["conditional_accuracy"] > 0.85
    assert document["report"]["fid_fm"] > 5 * document["calibration"]["fid_fm"]


@pytest.mark.slow
def test_evaluate_prints_a_table_with_the_calibration_row(random_checkpoint_path: Path) -> None:
    """Given no --json, the output is a table with the calibration row and the model's row."""
    result = CliRunner().invoke(cli, ["evaluate", str(random_checkpoint_path), "--samples", "10", "--no-cas"])
    assert result.exit_code == 0, result.output
    assert "real train (calibration)" in result.output
    assert "FID_fm" in result.output and "random-fashion.pt" in result.output


def test_evaluate_a_missing_file_is_a_one_line_usage_error(tmp_path: Path) -> None:
    """Given a checkpoint path that does not exist, the command fails with a usage error, not a traceback."""
    result = CliRunner().invoke(cli, ["evaluate", str(tmp_path / "nope.pt")])
    assert result.exit_code == ExitCode.USAGE
    assert "no such checkpoint file" in result.output


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("notes.txt", "not a catalogan checkpoint (unreadable: not a torch file"),
        ("hello.txt", "not a catalogan checkpoint (unreadable: not a torch file"),
        ("empty.pt", "not a catalogan checkpoint (unreadable: empty or truncated)"),
        ("truncated.pt", "not a catalogan checkpoint (unreadable: RuntimeError: PytorchStreamReader failed"),
        ("image.png", "not a catalogan checkpoint (unreadable: not a torch file"),
        ("state-dict.pt", "not a catalogan checkpoint (a torch file without a format_version)"),
        ("other-widths.pt", "checkpoint weights do not match its config"),
    ],
)
def test_evaluate_a_file_that_is_not_a_checkpoint_is_one_line_naming_it(
    not_checkpoint_files: dict[str, Path], name: str, reason: str
) -> None:
    """Given a file that is not a catalogan checkpoint, `evaluate FILE` says so in one line naming the file,
    exit 2 (bad input), instead of torch's multi-line unpickling text."""
    path = not_checkpoint_files[name]
    result = CliRunner().invoke(cli, ["evaluate", str(path), "--samples", "10"])
    assert result.exit_code == ExitCode.USAGE, result.output
    assert result.stderr.startswith(f"Error: {path}: {reason}"), result.stderr
    assert len(result.stderr.splitlines()) == 1 and "Traceback" not in result.output


def test_evaluate_refuses_a_generator_without_the_ten_fashion_categories(tmp_path: Path) -> None:
    """Given the 3-category `tiny` preset, the command explains that the evaluator needs 10 categories."""
    path = tmp_path / "tiny.pt"
    path.write_bytes(random_generator_checkpoint("tiny"))
    result = CliRunner().invoke(cli, ["evaluate", str(path), "--samples", "10"])
    assert result.exit_code == ExitCode.USAGE
    assert "10 categories" in result.output and "this generator has 3" in result.output


@pytest.mark.slow
@pytest.mark.integration
def test_evaluate_a_registry_reference_records_its_metrics(
    sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Given a registered version, `evaluate name@1 --record` reads it from the store and stores its metrics."""
    store_url = (tmp_path / "objects").as_uri()
    store = open_store(store_url)
    data = random_generator_checkpoint("fashion-cgan", seed=4)
    store.put("models/random/1/generator.pt", data)
    factory = make_session_factory(make_engine(sqlite_url))
    generator = load_generator(data)
    register_version(
        factory,
        name="random",
        preset="fashion-cgan",
        checkpoint_uri=store.uri("models/random/1/generator.pt"),
        checkpoint_sha256=generator.checkpoint_sha256,
        model_config=generator.config.to_dict(),
        data_fingerprint="random",
    )
    monkeypatch.setenv("CATALOGAN_DATABASE_URL", sqlite_url)
    monkeypatch.setenv("CATALOGAN_STORAGE_URL", store_url)
    result = CliRunner().invoke(
        cli, ["evaluate", "random@1", "--samples", "10", "--no-cas", "--no-calibration", "--record", "--json"]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["model"] == "random@1"
    metrics = get_version(factory, "random@1").metrics or {}
    assert metrics["conditional_accuracy"] < 0.5
    assert "cas" not in metrics and "fid_fm" in metrics  # not measured (--no-cas): nothing recorded for it

    missing = CliRunner().invoke(cli, ["evaluate", "random@9", "--samples", "10"])
    assert missing.exit_code == ExitCode.NOT_FOUND
