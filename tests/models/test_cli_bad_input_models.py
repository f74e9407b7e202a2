"""Bad input to `catalogan models show|promote|retire`, `evaluate` and `evaluator train`: one line naming the
argument or option and the rule, exit 2, no traceback, nothing written (no row, no file) and no work done."""

from __future__ import annotations

from pathlib import Path

import click
import pytest
from click.testing import CliRunner, Result
from sqlalchemy import func, select

from db.cli_support import ExitCode
from db.engine import make_engine, make_session_factory
from db.errors import NotFoundError, PlanningError
from db.job_specs import split_model_ref
from db.model_versions import get_model_version
from db.tables import ModelVersion
from models.cli_evaluate import weights_file_option
from models.inference import random_generator_checkpoint
from scheduler.cli.root import cli
from tests.cli_results import one_error_line

BAD_REFS = (
    "fashion-cgan@99999999999999999999",  # OverflowError on SQLite before
    "fashion-cgan@3000000000",  # integer out of range on PostgreSQL before
    "fashion-cgan@²",  # passed str.isdigit, then int() failed
    "fashion-cgan@",
    "fashion-cgan@1.5",
)


@pytest.fixture
def env(tmp_path: Path, sqlite_url: str) -> dict[str, str]:
    """A fresh SQLite registry (schema at head, no rows) and a local store in tmp_path."""
    return {
        "CATALOGAN_DATABASE_URL": sqlite_url,
        "CATALOGAN_STORAGE_URL": (tmp_path / "store").as_uri(),
        "CATALOGAN_DATA_DIR": str(tmp_path / "data"),
    }


def _invoke(args: list[str], env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(cli, args, env=env, prog_name="catalogan")


def _model_rows(sqlite_url: str) -> int:
    engine = make_engine(sqlite_url)
    try:
        with make_session_factory(engine)() as session:
            return int(session.scalar(select(func.count()).select_from(ModelVersion)) or 0)
    finally:
        engine.dispose()


@pytest.mark.parametrize("command", ["show", "promote", "retire"])
@pytest.mark.parametrize("ref", BAD_REFS)
def test_models_commands_refuse_a_bad_version_before_touching_the_registry(
    command: str, ref: str, env: dict[str, str], sqlite_url: str, tmp_path: Path
) -> None:
    """Given a reference whose version is not 1 to 9 ASCII digits, the command exits 2 with one line naming the
    reference and the rule, and registers nothing (not even the shipped model) nor stores anything."""
    result = _invoke(["models", command, ref], env)
    assert result.exit_code == ExitCode.USAGE, result.output
    line = one_error_line(result)
    assert repr(ref) in line and "1 to 9 digits" in line
    assert _model_rows(sqlite_url) == 0
    assert not (tmp_path / "store").exists()


def test_the_parser_takes_versions_of_one_to_nine_ascii_digits() -> None:
    """Given the API's rule (`@[0-9]{1,9}`), the CLI's parser takes the same references and refuses the rest."""
    assert split_model_ref("fashion-cgan") == ("fashion-cgan", None)
    assert split_model_ref("fashion-cgan@3") == ("fashion-cgan", 3)
    assert split_model_ref("fashion-cgan@999999999") == ("fashion-cgan", 999_999_999)
    for ref in (*BAD_REFS, "fashion-cgan@1000000000", "fashion-cgan@٣", "@3"):
        with pytest.raises(PlanningError, match="1 to 9 digits"):
            split_model_ref(ref)


def test_a_version_beyond_nine_digits_is_not_registered_without_asking_the_database(sqlite_url: str) -> None:
    """Given a version no integer column holds, `get_model_version` says it is not registered (no OverflowError)."""
    engine = make_engine(sqlite_url)
    try:
        with make_session_factory(engine)() as session:
            for version in (10**20, 3_000_000_000, -1):
                with pytest.raises(NotFoundError, match="not registered"):
                    get_model_version(session, "fashion-cgan", version)
    finally:
        engine.dispose()


def test_evaluate_refuses_a_bad_version_before_opening_the_registry(
    env: dict[str, str], sqlite_url: str
) -> None:
    """Given `evaluate NAME@<20 digits>`, one line naming the reference, exit 2, no row registered."""
    result = _invoke(["evaluate", "fashion-cgan@99999999999999999999"], env)
    assert result.exit_code == ExitCode.USAGE, result.output
    assert "fashion-cgan@99999999999999999999" in one_error_line(result)
    assert _model_rows(sqlite_url) == 0


@pytest.fixture
def checkpoint_file(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.pt"
    path.write_bytes(random_generator_checkpoint("tiny"))
    return path


def test_evaluate_closest_pairs_without_memorization_is_a_usage_error(
    checkpoint_file: Path, tmp_path: Path
) -> None:
    """Given --closest-pairs without --memorization (which finds the pairs), exit 2 naming both; no file."""
    pairs = tmp_path / "cp.png"
    result = _invoke(
        ["evaluate", str(checkpoint_file), "--closest-pairs", str(pairs), "--data", str(tmp_path / "none")]
    )
    assert result.exit_code == ExitCode.USAGE, result.output
    line = one_error_line(result)
    assert "--closest-pairs" in line and "--memorization" in line
    assert not pairs.exists()


@pytest.mark.parametrize("seed", ["-1", str(2**63)])
def test_evaluate_seed_out_of_range_names_the_option(
    checkpoint_file: Path, tmp_path: Path, seed: str
) -> None:
    """Given a --seed below 0 or beyond 2^63-1, one line naming --seed, exit 2, no report written."""
    out = tmp_path / "report.json"
    result = _invoke(
        [
            "evaluate",
            str(checkpoint_file),
            "--seed",
            seed,
            "--out",
            str(out),
            "--data",
            str(tmp_path / "none"),
        ]
    )
    assert result.exit_code == ExitCode.USAGE, result.output
    assert "--seed" in one_error_line(result)
    assert not out.exists()


def test_evaluator_train_out_under_a_file_is_refused_before_training(tmp_path: Path) -> None:
    """Given --out whose folder is a regular file, exit 2 naming --out before any data is read (no --data)."""
    (tmp_path / "afile").write_text("x")
    result = _invoke(
        [
            "evaluator",
            "train",
            "--epochs",
            "1",
            "--data",
            str(tmp_path / "none"),
            "--out",
            str(tmp_path / "afile" / "ev.pt"),
        ]
    )
    assert result.exit_code == ExitCode.USAGE, result.output
    line = one_error_line(result)
    assert "--out" in line and "afile" in line
    assert (tmp_path / "afile").read_text() == "x"


def test_evaluator_train_out_in_a_missing_folder_is_still_fine(tmp_path: Path) -> None:
    """Given --out in folders that do not exist yet (created when the weights are saved), the check passes and
    creates nothing."""
    param = click.Option(["--out"])
    wanted = tmp_path / "new" / "sub" / "ev.pt"
    assert weights_file_option(click.Context(click.Command("x")), param, wanted) == wanted
    assert not (tmp_path / "new").exists()
    (tmp_path / "ev.sha256").mkdir()
    with pytest.raises(click.BadParameter, match="is a folder"):
        weights_file_option(click.Context(click.Command("x")), param, tmp_path / "ev.pt")


@pytest.mark.parametrize("device", ["tpu", "cuda", "cuda:1", "cuda:x", "CPU"])
def test_evaluator_train_bad_device_is_refused_before_training(
    device: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Given a --device torch cannot train on here (CUDA on a machine without it), one line naming --device,
    exit 2, before any data is read or weights written."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "ev.pt"
    result = _invoke(
        [
            "evaluator",
            "train",
            "--epochs",
            "1",
            "--data",
            str(tmp_path / "none"),
            "--out",
            str(out),
            "--device",
            device,
        ]
    )
    assert result.exit_code == ExitCode.USAGE, result.output
    line = one_error_line(result)
    assert "--device" in line and repr(device) in line
    assert not out.exists()
