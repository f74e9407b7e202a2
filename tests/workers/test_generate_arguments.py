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
