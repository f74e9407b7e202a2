"""Migrations: they build exactly the tables the code declares, on SQLite and PostgreSQL, both ways."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from db import migrate
from db.tables import Base

TABLES = sorted(table.name for table in Base.metadata.sorted_tables)


def _catalogan(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run the installed `catalogan` console script (as a user would)."""
    exe = Path(sys.executable).parent / "catalogan"
    return subprocess.run([str(exe), *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=120)


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CATALOGAN_")}
    return {**env, **extra}


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database with no tables: a new SQLite file, or a new PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'empty.db'}"
    return str(request.getfixturevalue("empty_pg_url"))


def test_upgrade_builds_exactly_the_declared_tables(empty_db_url: str) -> None:
    """Given an empty database, upgrade to head creates every table of db.tables and nothing differs."""
    result = migrate.upgrade(empty_db_url)

    assert (result.before, result.after) == (None, migrate.head_revision())
    assert sorted(migrate.table_columns(empty_db_url)) == TABLES
    assert migrate.check_schema(empty_db_url) == []


def test_upgrade_downgrade_upgrade_round_trips(empty_db_url: str) -> None:
    """Given a migrated database, downgrade to base drops every table, and upgrading again rebuilds the same."""
    migrate.upgrade(empty_db_url)
    columns = migrate.table_columns(empty_db_url)

    down = migrate.downgrade(empty_db_url, "base")
    assert (down.after, migrate.table_columns(empty_db_url), migrate.current(empty_db_url)) == (
        None,
        {},
        None,
    )

    again = migrate.upgrade(empty_db_url)
    assert again.changed and migrate.table_columns(empty_db_url) == columns
    assert migrate.check_schema(empty_db_url) == []


def test_upgrade_twice_is_a_no_op(empty_db_url: str) -> None:
    """Given a database at head, a second upgrade reports no change."""
    migrate.upgrade(empty_db_url)

    assert not migrate.upgrade(empty_db_url).changed


def test_check_schema_reports_a_table_the_migrations_lack(tmp_path: Path) -> None:
    """Given a database missing one declared table, check_schema names it (so the check can fail)."""
    url = f"sqlite:///{tmp_path / 'x.db'}"
    migrate.upgrade(url)
    from db.engine import make_engine

    engine = make_engine(url)
    with engine.begin() as connection:
        connection.exec_driver_sql("DROP TABLE webhook_deliveries")
    engine.dispose()

    assert "webhook_deliveries" in repr(migrate.check_schema(url))


def test_cli_upgrade_on_empty_sqlite_and_postgresql_gives_the_same_tables(
    tmp_path: Path, empty_pg_url: str
) -> None:
    """Given an empty SQLite file and an empty PostgreSQL database, `catalogan db upgrade` on each yields
    the same tables with the same columns, and `catalogan db check` passes on both."""
    sqlite_url = f"sqlite:///{tmp_path / 'cli.db'}"
    layouts = {}
    for url in (sqlite_url, empty_pg_url):
        env = _env(CATALOGAN_DATABASE_URL=url)
        upgraded = _catalogan("db", "upgrade", "--json", env=env, cwd=tmp_path)
        assert upgraded.returncode == 0, upgraded.stderr
        assert json.loads(upgraded.stdout)["after"] == migrate.head_revision()
        checked = _catalogan("db", "check", env=env, cwd=tmp_path)
        assert checked.returncode == 0, checked.stderr
        layouts[url] = migrate.table_columns(url)

    assert layouts[sqlite_url] == layouts[empty_pg_url]
    assert sorted(layouts[sqlite_url]) == TABLES


def test_cli_upgrade_without_settings_creates_the_embedded_sqlite_file(tmp_path: Path) -> None:
    """Given no CATALOGAN_* settings, `catalogan db upgrade` creates ./catalogan-data/catalogan.db and says so;
    running it again says there was nothing to do."""
    first = _catalogan("db", "upgrade", env=_env(), cwd=tmp_path)
    second = _catalogan("db", "upgrade", env=_env(), cwd=tmp_path)

    assert first.returncode == 0, first.stderr
    assert (tmp_path / "catalogan-data" / "catalogan.db").is_file()
    assert "catalogan.db" in first.stdout and "<empty> -> " in first.stdout
    assert "nothing to do" in second.stdout


def test_cli_check_fails_with_exit_6_on_an_unmigrated_database(tmp_path: Path) -> None:
    """Given an empty database, `catalogan db check` exits 6 with one line telling to run upgrade."""
    result = _catalogan(
        "db", "check", env=_env(CATALOGAN_DATABASE_URL=f"sqlite:///{tmp_path / 'n.db'}"), cwd=tmp_path
    )

    assert result.returncode == 6
    assert result.stderr.strip().splitlines() == [
        f"Error: database is at <empty>, expected {migrate.head_revision()}: run `catalogan db upgrade`"
    ]


def test_cli_downgrade_base_then_current_reports_empty(tmp_path: Path) -> None:
    """Given a migrated database, `db downgrade base --yes` empties it and `db current --json` says so."""
    env = _env(CATALOGAN_DATABASE_URL=f"sqlite:///{tmp_path / 'd.db'}")
    assert _catalogan("db", "upgrade", env=env, cwd=tmp_path).returncode == 0

    down = _catalogan("db", "downgrade", "base", "--yes", env=env, cwd=tmp_path)
    current = _catalogan("db", "current", "--json", env=env, cwd=tmp_path)

    assert down.returncode == 0, down.stderr
    assert json.loads(current.stdout) == {
        "current": None,
        "head": migrate.head_revision(),
        "up_to_date": False,
    }


def test_cli_reports_an_unreachable_database_as_unavailable(tmp_path: Path) -> None:
    """Given a PostgreSQL URL nobody answers on, `catalogan db upgrade` exits 5 with a one-line error."""
    from tests.services import free_port

    url = f"postgresql://postgres@127.0.0.1:{free_port()}/nothing"
    result = _catalogan("db", "upgrade", env=_env(CATALOGAN_DATABASE_URL=url), cwd=tmp_path)

    assert result.returncode == 5
    assert len(result.stderr.strip().splitlines()) == 1 and "did not answer" in result.stderr


def test_concurrent_upgrades_of_an_empty_postgresql_all_succeed(empty_pg_url: str) -> None:
    """Given an empty PostgreSQL database, when three processes' worth of upgrades start at once (API, worker,
    beat starting together), then all succeed, exactly one of them creates the schema, and it matches."""
    import threading

    results: list[migrate.MigrationResult] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(3)

    def run() -> None:
        try:
            barrier.wait(timeout=10)
            results.append(migrate.upgrade(empty_pg_url))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)

    assert errors == []
    assert sum(result.changed for result in results) == 1
    assert migrate.check_schema(empty_pg_url) == []


def test_downgrade_to_a_newer_revision_is_refused_and_changes_nothing(empty_db_url: str) -> None:
    """Given a database at 0010, a downgrade to 0011 or to head is bad input (a ValueError naming REVISION and
    the rule), and the database stays at 0010."""
    migrate.upgrade(empty_db_url, "0010")

    for target in ("0011", "head"):
        with pytest.raises(
            migrate.DowngradeTargetError, match=r"REVISION '.+' is newer than .* revision 0010"
        ):
            migrate.downgrade(empty_db_url, target)

    assert migrate.current(empty_db_url) == "0010"
    assert issubclass(migrate.DowngradeTargetError, ValueError)


def test_downgrade_to_the_current_revision_changes_nothing(empty_db_url: str) -> None:
    """Given a database at head, a downgrade to head (or to its id) reports no change."""
    migrate.upgrade(empty_db_url)

    for target in ("head", migrate.head_revision()):
        result = migrate.downgrade(empty_db_url, target)
        assert (result.before, result.after, result.changed) == (migrate.head_revision(),) * 2 + (False,)


def test_cli_downgrade_above_the_current_revision_exits_2_and_to_it_exits_0(tmp_path: Path) -> None:
    """Given a database at 0010, `db downgrade 0011 --url ... --yes` exits 2 with one line naming REVISION and
    the rule; at head, `db downgrade head --yes` says there is nothing to do (exit 0)."""
    url = f"sqlite:///{tmp_path / 'd.db'}"
    env = _env()
    assert (
        _catalogan("db", "upgrade", "--revision", "0010", "--url", url, env=env, cwd=tmp_path).returncode == 0
    )

    above = _catalogan("db", "downgrade", "0011", "--url", url, "--yes", env=env, cwd=tmp_path)

    assert above.returncode == 2, above.stderr
    assert above.stderr.strip().splitlines() == [
        "Error: REVISION '0011' is newer than the database's revision 0010: a downgrade only goes to an older "
        "revision (`catalogan db upgrade --revision 0011` goes up)"
    ]
    assert migrate.current(url) == "0010"

    assert _catalogan("db", "upgrade", "--url", url, env=env, cwd=tmp_path).returncode == 0
    at_head = _catalogan("db", "downgrade", "head", "--url", url, "--yes", env=env, cwd=tmp_path)

    assert at_head.returncode == 0, at_head.stderr
    assert "nothing to do" in at_head.stdout
