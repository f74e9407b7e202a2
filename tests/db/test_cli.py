"""The `catalogan` root: help works, and the CLI and `db` never import torch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from scheduler.cli.root import LAZY_HELP, LAZY_SUBCOMMANDS, cli


def test_importing_the_cli_and_db_commands_does_not_load_torch() -> None:
    """Given a fresh interpreter, importing scheduler.cli and the db command group leaves torch unloaded."""
    code = (
        "import sys, scheduler.cli, scheduler.cli.root, scheduler.cli.db_commands; "
        "print('torch' in sys.modules, 'models' in sys.modules, 'workers' in sys.modules)"
    )
    output = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )

    assert output.stdout.split() == ["False", "False", "False"]


def test_catalogan_help_lists_commands_without_importing_them(tmp_path: Path) -> None:
    """Given the installed console script, `catalogan --help` exits 0 and lists every lazy command."""
    exe = Path(sys.executable).parent / "catalogan"
    result = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=60, cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    assert "Usage: catalogan" in result.stdout
    for name in LAZY_SUBCOMMANDS:
        assert name in result.stdout


def test_every_db_command_has_help_with_an_example() -> None:
    """Given each `catalogan db` subcommand, its --help shows an `Example:` section."""
    runner = CliRunner()
    for name in ["upgrade", "downgrade", "current", "check"]:
        result = runner.invoke(cli, ["db", name, "--help"])
        assert result.exit_code == 0, result.output
        assert "Example:" in result.output
    assert "db" in LAZY_HELP


def test_a_malformed_database_url_or_a_database_without_tables_is_one_line_naming_what_to_fix(
    tmp_path: Path,
) -> None:
    """`CATALOGAN_DATABASE_URL=garbage` gave a SQLAlchemy traceback (exit 1), and a fresh data folder "a
    service did not answer" (exit 5, an outage): both are configuration (exit 6), in one line."""
    from click.testing import CliRunner

    from db.cli_support import ExitCode
    from scheduler.cli.root import cli

    env = {"CATALOGAN_DATA_DIR": str(tmp_path / "data")}
    for url in ("garbage", "mysql://root:hunter2@db/catalog"):
        result = CliRunner().invoke(cli, ["tenants", "ls"], env={**env, "CATALOGAN_DATABASE_URL": url})
        assert result.exit_code == ExitCode.CONFIG, result.output
        assert result.output.startswith("Error: CATALOGAN_DATABASE_URL: must be a PostgreSQL or SQLite URL")
        assert len(result.output.strip().splitlines()) == 1 and "hunter2" not in result.output
    fresh = CliRunner().invoke(cli, ["tenants", "ls"], env=env)
    assert fresh.exit_code == ExitCode.CONFIG, fresh.output
    assert "run `catalogan db upgrade`" in fresh.output and len(fresh.output.strip().splitlines()) == 1


def test_output_paths_are_checked_before_the_work_they_receive(tmp_path: Path) -> None:
    """`generate --out afile/sub` ran the whole job and then printed a traceback; `--out s3://b/x` made a
    local folder `s3:/b/x`; `jobs export --out` and `evaluate --out` failed after all their work. Each is now
    a usage error naming the option (exit 2) before anything runs."""
    from click.testing import CliRunner

    from scheduler.cli.root import cli

    (tmp_path / "afile").write_text("a file, not a folder")
    env = {
        "CATALOGAN_DATA_DIR": str(tmp_path / "data"),
        "CATALOGAN_API_KEY": "cg_x",
        "CATALOGAN_API_URL": "http://127.0.0.1:9",
    }
    cases = [
        ["generate", "--category", "sneaker=1", "--out", str(tmp_path / "afile" / "sub")],
        ["generate", "--category", "sneaker=1", "--out", "s3://bucket/x"],
        ["jobs", "export", "a" * 32, "--out", str(tmp_path / "nodir" / "x.csv")],
        ["jobs", "export", "a" * 32, "--images", str(tmp_path / "afile" / "sub")],
        ["evaluate", str(tmp_path / "afile"), "--out", str(tmp_path / "afile" / "r.json")],
    ]
    for args in cases:
        result = CliRunner().invoke(cli, args, env=env)
        assert result.exit_code == 2, (args, result.output)
        assert "Invalid value for '--" in result.output, (args, result.output)
    assert not (tmp_path / "data").exists() and not Path("s3:").exists()


def test_a_finite_float_option_refuses_nan_infinity_and_out_of_range_values_naming_the_option() -> None:
    import click

    from db.cli_support import FiniteFloat

    @click.command()
    @click.option("--interval", type=FiniteFloat(min=0, max=60, min_open=True), default=5.0)
    def command(interval: float) -> None:
        click.echo(f"interval={interval}")

    runner = CliRunner()
    assert runner.invoke(command, ["--interval", "2.5"]).output == "interval=2.5\n"
    for bad, rule in [
        ("nan", "not a finite number"),
        ("inf", "not a finite number"),
        ("0", "must be > 0"),
        ("-1", "must be > 0"),
        ("61", "must be <= 60"),
        ("x", "is not a valid float"),
    ]:
        result = runner.invoke(command, ["--interval", bad])
        assert result.exit_code == 2, (bad, result.output)
        assert "'--interval'" in result.output and rule in result.output, (bad, result.output)
