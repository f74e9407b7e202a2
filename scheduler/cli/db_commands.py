"""`catalogan db ...`: create, upgrade, inspect and check the SQL schema (Alembic migrations)."""

from __future__ import annotations

import json

import click

from db import migrate
from db.cli_support import one_line_errors
from db.errors import ConfigError
from db.settings import DatabaseSettings, DataSettings

url_option = click.option(
    "--url",
    "database_url",
    default=None,
    metavar="URL",
    help="SQLAlchemy URL; default: CATALOGAN_DATABASE_URL, else the embedded SQLite file.",
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")


def _resolve(database_url: str | None) -> str:
    # Read settings once, here in the entry point; --url goes through the same normalisation.
    if database_url:
        return DatabaseSettings(database_url=database_url).url()
    return DatabaseSettings().url(DataSettings())


def _describe(revision: str | None) -> str:
    return revision or "<empty>"


def _echo_result(verb: str, result: migrate.MigrationResult, as_json: bool) -> None:
    if as_json:
        payload = {
            "url": result.url,
            "before": result.before,
            "after": result.after,
            "changed": result.changed,
        }
        click.echo(json.dumps(payload))
    elif result.changed:
        click.echo(f"{verb} {result.url}: {_describe(result.before)} -> {_describe(result.after)}")
    else:
        click.echo(f"{result.url} already at {_describe(result.after)}: nothing to do")


@click.group("db")
def db() -> None:
    """Create, upgrade and inspect the SQL schema.

    The database comes from CATALOGAN_DATABASE_URL (or --url); with none set it is the
    embedded SQLite file under ./catalogan-data/.

    Example:

    \b
        CATALOGAN_DATABASE_URL=postgresql://postgres@localhost/catalogan catalogan db upgrade
    """


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True, help="Target revision.")
@url_option
@json_option
@one_line_errors
def upgrade_command(revision: str, database_url: str | None, as_json: bool) -> None:
    """Create or migrate the schema up to the newest revision.

    Safe to run again: an up-to-date database is left alone.

    Example:

        catalogan db upgrade --json
    """
    _echo_result("Upgraded", migrate.upgrade(_resolve(database_url), revision), as_json)


@db.command("downgrade")
@click.argument("revision")
@click.option("--yes", is_flag=True, help="Do not ask before dropping tables (needed without a terminal).")
@url_option
@json_option
@one_line_errors
def downgrade_command(revision: str, yes: bool, database_url: str | None, as_json: bool) -> None:
    """Migrate the schema down to REVISION.

    `base` drops every catalogan table and its data.

    Example:

        catalogan db downgrade base --yes
    """
    url = _resolve(database_url)
    if not yes:
        click.confirm(f"Downgrade {url} to {revision}? Rows in dropped tables are lost", abort=True)
    _echo_result("Downgraded", migrate.downgrade(url, revision), as_json)


@db.command("current")
@url_option
@json_option
@one_line_errors
def current_command(database_url: str | None, as_json: bool) -> None:
    """Print the database's revision and the newest one shipped.

    Example:

        catalogan db current --json
    """
    url = _resolve(database_url)
    revision, head = migrate.current(url), migrate.head_revision()
    if as_json:
        click.echo(json.dumps({"current": revision, "head": head, "up_to_date": revision == head}))
    else:
        suffix = " (head)" if revision == head else f" (head is {head}; run `catalogan db upgrade`)"
        click.echo(f"{_describe(revision)}{suffix}")


@db.command("check")
@url_option
@json_option
@one_line_errors
def check_command(database_url: str | None, as_json: bool) -> None:
    """Check that the schema is at head and matches the code.

    Exits 0 when the database is at the newest revision and its tables match the code's, else 6.

    Example:

        catalogan db check && catalogan worker
    """
    url = _resolve(database_url)
    revision, head = migrate.current(url), migrate.head_revision()
    differences = [repr(diff) for diff in migrate.check_schema(url)] if revision == head else []
    ok = revision == head and not differences
    if as_json:
        click.echo(json.dumps({"current": revision, "head": head, "differences": differences, "ok": ok}))
    if revision != head:
        raise ConfigError(
            f"database is at {_describe(revision)}, expected {head}: run `catalogan db upgrade`"
        )
    if differences:
        raise ConfigError(f"schema differs from the code's tables: {'; '.join(differences)}")
    if not as_json:
        click.echo(f"{revision} (head): schema matches the tables")
