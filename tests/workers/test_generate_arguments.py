"""`catalogan generate` checks its arguments first and names them as typed: nothing is registered, migrated or
printed about the dataset for a typo."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from db.cli_support import CATALOGAN_ARGV, ExitCode


def generate(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """`catalogan generate ARGS` in `cwd` on the embedded default (no CATALOGAN_* variable)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CATALOGAN_")}
    return subprocess.run(
        [*CATALOGAN_ARGV, "generate", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def test_a_zero_count_is_named_as_typed_before_anything_happens(tmp_path: Path) -> None:
    """Given `--category bag=0` in an empty folder, when generate runs, then one line names `--category bag=0`,
    the exit code is 2, and no data folder was made (no registration, no dataset warning)."""
    result = generate(["--category", "bag=0", "--out", "out"], tmp_path)
    assert result.returncode == ExitCode.USAGE
    assert result.stderr.strip().splitlines() == [
        "Error: --category bag=0: count: Input should be greater than or equal to 1"
    ]
    assert not (tmp_path / "catalogan-data").exists()


def test_an_unknown_model_lists_the_registered_ones(tmp_path: Path) -> None:
    """Given a model name nobody registered, when generate runs, then the one error line names `--model` and
    lists the registered versions (exit 3)."""
    result = generate(["--category", "bag=2", "--model", "nope", "--out", "out"], tmp_path)
    assert result.returncode == ExitCode.NOT_FOUND, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("Error: --model nope: ") and "registered:" in line


def test_an_unknown_category_of_the_shipped_model_creates_no_data_folder(tmp_path: Path) -> None:
    """Given a fresh data folder and `--category sofa=3` (the shipped fashion-cgan has no sofa) / When generate
    runs / Then one line names the --category and lists the shipped model's categories, exit 2, and the data
    folder does not exist (it made catalogan.db, objects/ and broker/ and built the memorization index first)."""
    result = generate(["--category", "sofa=3", "--out", "out"], tmp_path)
    assert result.returncode == ExitCode.USAGE, result.stderr
    assert result.stderr.strip().splitlines() == [
        "Error: --category sofa=3: category: 'sofa' is not a category of model fashion-cgan@1 (one of: "
        "tshirt-top, trouser, pullover, dress, coat, sandal, shirt, sneaker, bag, ankle-boot)"
    ]
    assert not (tmp_path / "catalogan-data").exists() and not (tmp_path / "out").exists()


def test_an_unknown_category_is_refused_before_the_shipped_model_is_registered(tmp_path: Path) -> None:
    """Given a data folder whose database exists but holds no fashion-cgan yet (`catalogan db upgrade` ran) /
    When generate asks for an unknown category / Then exit 2 before the shipped model is registered (and its
    memorization index built)."""
    from db import migrate
    from db.engine import make_engine, make_session_factory
    from db.tables import ModelVersion

    url = f"sqlite:///{tmp_path / 'catalogan-data' / 'catalogan.db'}"
    migrate.upgrade(url)
    result = generate(["--category", "sofa=3", "--out", "out"], tmp_path)
    assert result.returncode == ExitCode.USAGE, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(
        "Error: --category sofa=3: category: 'sofa' is not a category of model fashion-cgan@1"
    )
    engine = make_engine(url)
    with make_session_factory(engine)() as session:
        assert session.query(ModelVersion).count() == 0
    engine.dispose()
    assert not (tmp_path / "catalogan-data" / "objects").exists()
