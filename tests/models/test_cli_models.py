"""`catalogan models ...` and `catalogan evaluate` in a fresh folder: the shipped model is there without any
set-up, and `models register` puts a checkpoint trained elsewhere behind the same metric gates as training."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from db.cli_support import CATALOGAN_ARGV, ExitCode
from models.default_model import SHIPPED_CHECKPOINT

pytestmark = pytest.mark.slow


def catalogan(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """`catalogan ARGS` in `cwd` with no CATALOGAN_* variable but `env` (so ./catalogan-data is the data folder)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CATALOGAN_")}
    return subprocess.run(
        [*CATALOGAN_ARGV, *args], cwd=cwd, env={**clean, **env}, capture_output=True, text=True, timeout=900
    )


def test_a_fresh_folder_lists_and_evaluates_the_shipped_model(tmp_path: Path, fashion_test: object) -> None:
    """Given an empty folder, when `models list` runs and then `evaluate fashion-cgan --samples 20`, then the list
    shows the shipped fashion-cgan@1 in production and the evaluation measures that version."""
    listed = catalogan(["models", "list"], tmp_path)
    assert listed.returncode == 0, listed.stderr
    header, *rows = listed.stdout.splitlines()
    assert header.split("\t")[:2] == ["ref", "status"]
    assert ["fashion-cgan@1", "production"] in [row.split("\t")[:2] for row in rows]
    assert (tmp_path / "catalogan-data" / "catalogan.db").is_file()

    evaluated = catalogan(
        ["evaluate", "fashion-cgan", "--samples", "20", "--no-calibration", "--json"], tmp_path
    )
    assert evaluated.returncode == 0, evaluated.stderr
    document = json.loads(evaluated.stdout)
    assert document["model"] == "fashion-cgan@1" and document["samples_per_class"] == 20
    assert 0.0 <= document["report"]["conditional_accuracy"] <= 1.0


def test_register_keeps_a_checkpoint_below_the_gates_a_candidate(
    tmp_path: Path, fashion_test: object
) -> None:
    """Given a generator checkpoint trained elsewhere and a CAS gate nobody passes, when `models register FILE
    --name N --promote` runs, then it is measured and registered but refused production (exit 4, naming the gate);
    with the gates an operator lowers, `models promote` then makes it production on the recorded metrics."""
    checkpoint = tmp_path / "elsewhere.pt"
    shutil.copy(SHIPPED_CHECKPOINT, checkpoint)
    refused = catalogan(
        ["models", "register", str(checkpoint), "--name", "outside", "--promote", "--samples", "10"],
        tmp_path,
        CATALOGAN_GATE_MIN_CAS="1.01",
    )
    assert refused.returncode == ExitCode.CONFLICT, refused.stderr
    assert "outside@1" in refused.stderr and "cas" in refused.stderr
    shown = json.loads(catalogan(["models", "show", "outside@1", "--json"], tmp_path).stdout)
    assert shown["status"] == "candidate" and "conditional_accuracy" in shown["metrics"]
    assert shown["checkpoint_uri"].endswith("/generator.pt")

    promoted = catalogan(
        ["models", "promote", "outside@1"],
        tmp_path,
        CATALOGAN_GATE_MIN_CAS="0",
        CATALOGAN_GATE_MIN_CONDITIONAL_ACCURACY="0.5",
    )
    assert promoted.returncode == 0, promoted.stderr
    assert "outside@1 is now production" in promoted.stdout


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("notes.txt", "not a catalogan checkpoint (unreadable: not a torch file"),
        ("image.png", "not a catalogan checkpoint (unreadable: not a torch file"),
        ("other-widths.pt", "checkpoint weights do not match its config"),
    ],
)
def test_register_refuses_a_file_that_is_not_a_checkpoint(
    tmp_path: Path, not_checkpoint_files: dict[str, Path], name: str, reason: str
) -> None:
    """Given a file that is not a checkpoint (or whose weights do not fit its config), when registered, then
    one error line naming it, exit 2 (bad input), and nothing is registered."""
    bogus = not_checkpoint_files[name]
    result = catalogan(["models", "register", str(bogus), "--name", "bogus", "--no-evaluate"], tmp_path)
    assert result.returncode == ExitCode.USAGE, result.stderr
    assert result.stderr.startswith(f"Error: {bogus}: {reason}"), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    listed = catalogan(["models", "list", "--json"], tmp_path)
    assert "bogus" not in {row["name"] for row in json.loads(listed.stdout)}


def test_a_model_name_that_cannot_be_addressed_is_refused_before_any_work(tmp_path: Path) -> None:
    """`--name fashion-cgan@2` registered `fashion-cgan@2@1`, which no command could address again; `a/b`
    became two folders of object keys. Refused as a usage error naming --name, before the checkpoint is read."""
    from click.testing import CliRunner

    from scheduler.cli.root import cli

    not_a_checkpoint = tmp_path / "x.pt"
    not_a_checkpoint.write_bytes(b"x")
    env = {"CATALOGAN_DATA_DIR": str(tmp_path / "data")}
    for name in ("fashion-cgan@2", "a/b", "A B", "", ".hidden"):
        result = CliRunner().invoke(
            cli, ["models", "register", str(not_a_checkpoint), "--name", name, "--no-evaluate"], env=env
        )
        assert result.exit_code == 2 and "Invalid value for '--name'" in result.output, (name, result.output)
        train = CliRunner().invoke(cli, ["train", "--name", name, "--steps", "1"], env=env)
        assert train.exit_code == 2 and "Invalid value for '--name'" in train.output, (name, train.output)
    assert not (tmp_path / "data").exists()
