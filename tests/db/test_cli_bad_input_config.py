"""Bad configuration and bad `catalogan db` input: one line naming the variable or option, exit 6 (configuration)
or 2 (usage), no traceback, and nothing created or changed — a read-only command never makes a SQLite file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from db import migrate
from db.cli_support import ExitCode
from db.engine import make_engine, missing_sqlite_file
from db.errors import ConfigError
from db.settings import BrokerSettings, SettingsError, StorageSettings
from scheduler.cli.root import cli


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No CATALOGAN_* variable from the developer's shell leaks into these tests."""
    import os

    for name in list(os.environ):
        if name.startswith("CATALOGAN_"):
            monkeypatch.delenv(name)


def run(args: list[str], env: dict[str, str], stdin: str | None = None) -> Result:
    """Invoke `catalogan` with `env`; stdin is not a terminal (as in a script or CI)."""
    return CliRunner().invoke(cli, args, env=env, input=stdin, prog_name="catalogan")


def one_error_line(result: Result) -> str:
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "Traceback" not in result.output, result.output
    return errors[0]


# -- CATALOGAN_BROKER_URL -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url", ["bogus://x", "amqp://guest@rabbit//", "filesystem://", "redis", "redis://h:port"]
)
def test_a_broker_url_that_is_not_redis_is_a_settings_error_naming_the_variable(url: str) -> None:
    with pytest.raises(SettingsError, match=r"^CATALOGAN_BROKER_URL: must be a Redis URL") as caught:
        BrokerSettings(broker_url=url)
    assert isinstance(caught.value, ConfigError)


@pytest.mark.parametrize(
    "url",
    [
        "",
        "redis://127.0.0.1:6379/0",
        "rediss://:secret@cache.example.com:6380/1",
        "redis+socket:///run/r.sock",
    ],
)
def test_redis_broker_urls_are_accepted(url: str) -> None:
    assert BrokerSettings(broker_url=url).broker_url == url


def test_workers_with_a_bogus_broker_url_is_one_line_exit_6(tmp_path: Path) -> None:
    """`CATALOGAN_BROKER_URL=bogus://x catalogan workers` was kombu's KeyError 'No such transport' traceback."""
    env = {"CATALOGAN_DATA_DIR": str(tmp_path / "data"), "CATALOGAN_BROKER_URL": "bogus://x"}
    result = run(["workers"], env)
    assert result.exit_code == ExitCode.CONFIG, result.output
    assert one_error_line(result).startswith("Error: CATALOGAN_BROKER_URL: must be a Redis URL")
    assert "bogus" not in result.output  # values are never echoed
    assert not (tmp_path / "data").exists()


# -- CATALOGAN_STORAGE_URL ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "bogus://x",
        "file://relative/path",
        "file:relative",
        "s3://",
        "s3://bucket?x=1",
        "s3://bucket/a//b",
        "/abs",
    ],
)
def test_a_storage_url_open_store_cannot_open_is_a_settings_error_naming_the_variable(url: str) -> None:
    with pytest.raises(SettingsError, match=r"^CATALOGAN_STORAGE_URL: must be s3://bucket\[/prefix\]"):
        StorageSettings(storage_url=url)


@pytest.mark.parametrize(
    "url",
    [
        "",
        "s3://bucket",
        "s3://bucket/prod/images",
        "file:///srv/objects",
        "file://localhost/srv",
        "memory://",
    ],
)
def test_storage_urls_open_store_opens_are_accepted(url: str) -> None:
    assert StorageSettings(storage_url=url).storage_url == url


@pytest.mark.parametrize("url", ["bogus://x", "file://relative/path"])
def test_beat_with_a_bad_storage_url_is_one_line_exit_6_before_anything_runs(
    tmp_path: Path, url: str
) -> None:
    """Exit 5 ("unsupported object-store URL", no variable named) after a webhook pass had run: now exit 6 naming
    CATALOGAN_STORAGE_URL, before the broker folder or the database is made."""
    env = {"CATALOGAN_DATA_DIR": str(tmp_path / "data"), "CATALOGAN_STORAGE_URL": url}
    result = run(["beat", "--once"], env)
    assert result.exit_code == ExitCode.CONFIG, result.output
    assert one_error_line(result).startswith("Error: CATALOGAN_STORAGE_URL: must be")
    assert not (tmp_path / "data").exists()


# -- read-only `db` commands never create a SQLite file -------------------------------------------------------


@pytest.mark.parametrize("command", ["current", "check"])
def test_db_current_and_check_on_a_missing_folder_name_the_url_and_create_nothing(
    tmp_path: Path, command: str
) -> None:
    """`db current --url sqlite:////tmp/typo/sub/x.db` exited 0 having made the folders and an empty file."""
    url = f"sqlite:///{tmp_path / 'typo' / 'sub' / 'x.db'}"
    result = run(["db", command, "--url", url], {"CATALOGAN_DATA_DIR": str(tmp_path / "data")})
    assert result.exit_code == ExitCode.CONFIG, result.output
    line = one_error_line(result)
    assert line.startswith(f"Error: --url {url}: the SQLite database file") and "does not exist" in line
    assert not (tmp_path / "typo").exists() and not (tmp_path / "data").exists()


def test_db_current_names_the_variable_or_the_embedded_default_and_creates_nothing(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'missing.db'}"
    from_variable = run(["db", "current"], {"CATALOGAN_DATABASE_URL": url})
    assert from_variable.exit_code == ExitCode.CONFIG, from_variable.output
    assert one_error_line(from_variable).startswith(f"Error: CATALOGAN_DATABASE_URL {url}: ")
    embedded = run(["db", "current", "--json"], {"CATALOGAN_DATA_DIR": str(tmp_path / "data")})
    assert embedded.exit_code == ExitCode.CONFIG, embedded.output
    assert "CATALOGAN_DATA_DIR" in one_error_line(embedded) and "does not exist" in embedded.output
    assert sorted(tmp_path.iterdir()) == []


def test_db_check_reports_a_missing_file_in_an_existing_folder_as_empty_without_creating_it(
    tmp_path: Path,
) -> None:
    result = run(["db", "check", "--url", f"sqlite:///{tmp_path / 'n.db'}"], {})
    assert result.exit_code == ExitCode.CONFIG, result.output
    assert "run `catalogan db upgrade`" in one_error_line(result)
    assert not (tmp_path / "n.db").exists()


def test_make_engine_without_create_refuses_a_missing_sqlite_file_and_makes_nothing(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'a' / 'b.db'}"
    assert missing_sqlite_file(url) == tmp_path / "a" / "b.db"
    with pytest.raises(ConfigError, match="does not exist"):
        make_engine(url, create=False)
    with pytest.raises(ConfigError, match="does not exist"):
        migrate.current(url, create=False)
    assert not (tmp_path / "a").exists()
    assert missing_sqlite_file("sqlite://") is None and missing_sqlite_file("postgresql://h/db") is None
    make_engine(url).dispose()  # the default (the embedded stack, `db upgrade`) still makes the folder
    assert (tmp_path / "a").is_dir()


def test_db_upgrade_still_creates_the_sqlite_file_and_current_then_reads_it(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'new' / 'c.db'}"
    assert run(["db", "upgrade", "--url", url], {}).exit_code == 0
    current = run(["db", "current", "--url", url, "--json"], {})
    assert current.exit_code == 0, current.output
    assert json.loads(current.output)["up_to_date"] is True


# -- db upgrade --revision, db downgrade --------------------------------------------------------------------


@pytest.fixture
def migrated(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'm.db'}"
    migrate.upgrade(url)
    return url


def test_db_downgrade_without_a_terminal_and_without_yes_says_to_pass_yes(migrated: str) -> None:
    """It printed a bare "Aborted!" (exit 1) without mentioning --yes."""
    result = run(["db", "downgrade", "0010", "--url", migrated], {}, stdin="")
    assert result.exit_code == ExitCode.USAGE, result.output
    assert "--yes" in one_error_line(result) and "Aborted" not in result.output
    assert migrate.current(migrated) == migrate.head_revision()


@pytest.mark.parametrize(
    ("args", "option"),
    [(["upgrade", "--revision", "nosuch"], "'--revision'"), (["downgrade", "nosuch", "--yes"], "'REVISION'")],
)
def test_an_unknown_revision_is_a_usage_error_naming_it_and_nothing_changes(
    migrated: str, tmp_path: Path, args: list[str], option: str
) -> None:
    """`db upgrade --revision nosuch` exited 6 without naming --revision."""
    result = run(["db", *args, "--url", migrated], {})
    assert result.exit_code == ExitCode.USAGE, result.output
    line = one_error_line(result)
    assert option in line and "nosuch" in line
    assert migrate.current(migrated) == migrate.head_revision()
    fresh = tmp_path / "fresh.db"
    again = run(["db", *args, "--url", f"sqlite:///{fresh}"], {})
    assert again.exit_code == ExitCode.USAGE and not fresh.exists()


def test_known_and_relative_revisions_still_pass_the_check() -> None:
    for revision in ("head", "heads", "base", migrate.head_revision(), "-1", "0010+1"):
        assert migrate.check_revision(revision) == revision
    with pytest.raises(migrate.UnknownRevisionError):
        migrate.check_revision("nosuch")
