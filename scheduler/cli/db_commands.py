"""`catalogan db ...`: create, upgrade, inspect and check the SQL schema (Alembic migrations)."""

from __future__ import annotations

import json
import sys

import click

from db import migrate
from db.cli_support import one_line_errors
from db.engine import missing_sqlite_file
from db.errors import ConfigError
from db.settings import DatabaseSettings, DataSettings, SettingsError

url_option = click.option(
    "--url",
    "database_url",
    default=None,
    metavar="URL",
    help="SQLAlchemy URL; default: CATALOGAN_DATABASE_URL, else the embedded SQLite file.",
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")


def _resolve_with_source(database_url: str | None) -> tuple[str, str]:
    """The effective URL and where it came from (--url, CATALOGAN_DATABASE_URL or the data folder's default)."""
    # Read settings once, here in the entry point; --url goes through the same normalisation.
    if database_url:
        try:
            return DatabaseSettings(database_url=database_url).url(), "--url"
        except SettingsError as exc:
            prefix = "CATALOGAN_DATABASE_URL: "
            if str(exc).startswith(prefix):  # the rule broken by --url itself, not by another variable
                message = str(exc).removeprefix(prefix).removesuffix(" (see docs/configuration.md)")
                raise click.BadParameter(message, param_hint="'--url'") from None
            raise
    settings = DatabaseSettings()
    if settings.database_url:
        return settings.url(), "CATALOGAN_DATABASE_URL"
    return settings.url(DataSettings()), "the embedded default under CATALOGAN_DATA_DIR"


def _resolve(database_url: str | None) -> str:
    return _resolve_with_source(database_url)[0]


def _existing(database_url: str | None, *, folder_may_exist_alone: bool = False) -> tuple[str, bool]:
    """The URL of a database a command only reads (or downgrades), and whether it exists: a SQLite file that
    does not exist is never created by such a command (a typo in --url made its folders and an empty file).

    A missing file is a `ConfigError` naming the URL's source; with `folder_may_exist_alone` a missing file in an
    existing folder is reported as an empty database instead (False), still without creating it."""
    url, source = _resolve_with_source(database_url)
    missing = missing_sqlite_file(url)
    if missing is None:
        return url, True
    if folder_may_exist_alone and missing.parent.is_dir():
        return url, False
    where = "" if source.startswith("the embedded") else f" {url}"
    raise ConfigError(
        f"{source}{where}: the SQLite database file {str(missing)!r} does not exist"
        f"{'' if missing.parent.is_dir() else ' (nor its folder)'}; check the path, or create it with "
        "`catalogan db upgrade`"
    )


def _revision(revision: str, param_hint: str) -> str:
    """`revision` when it names shipped migrations; a usage error naming the option or argument otherwise."""
    try:
        return migrate.check_revision(revision)
    except migrate.UnknownRevisionError as exc:
        raise click.BadParameter(
            f"{exc} (the newest shipped is {migrate.head_revision()})", param_hint=param_hint
        ) from None


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
@click.option(
    "--revision",
    default="head",
    show_default=True,
    help="Target revision: head, a revision id (or a unique prefix of one); an unknown one is refused (exit 2).",
)
@url_option
@json_option
@one_line_errors
def upgrade_command(revision: str, database_url: str | None, as_json: bool) -> None:
    """Create or migrate the schema up to the newest revision.

    Safe to run again: an up-to-date database is left alone.

    Example:

        catalogan db upgrade --json
    """
    revision = _revision(revision, "'--revision'")
    _echo_result("Upgraded", migrate.upgrade(_resolve(database_url), revision), as_json)


@db.command("downgrade")
@click.argument("revision")
@click.option("--yes", is_flag=True, help="Do not ask before dropping tables (needed without a terminal).")
@url_option
@json_option
@one_line_errors
def downgrade_command(revision: str, yes: bool, database_url: str | None, as_json: bool) -> None:
    """Migrate the schema down to REVISION.

    `base` drops every catalogan table and its data. Without a terminal (a script, CI) --yes is required.

    Example:

        catalogan db downgrade base --yes
    """
    revision = _revision(revision, "'REVISION'")
    if not yes and not sys.stdin.isatty():
        # click.confirm would read end-of-file and print a bare "Aborted!" (exit 1).
        raise click.UsageError("stdin is not a terminal, so nobody can confirm: pass --yes to downgrade")
    url, _exists = _existing(database_url)
    if not yes:
        click.confirm(f"Downgrade {url} to {revision}? Rows in dropped tables are lost", abort=True)
    _echo_result("Downgraded", migrate.downgrade(url, revision), as_json)


@db.command("current")
@url_option
@json_option
@one_line_errors
def current_command(database_url: str | None, as_json: bool) -> None:
    """Print the database's revision and the newest one shipped.

    A SQLite file that does not exist is an error (exit 6): it is never created here.

    Example:

        catalogan db current --json
    """
    url, _exists = _existing(database_url)
    revision, head = migrate.current(url, create=False), migrate.head_revision()
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

    Exits 0 when the database is at the newest revision and its tables match the code's, else 6. A SQLite file
    that does not exist counts as an empty database (or, when its folder is missing too, is named as missing);
    either way it is not created.

    Example:

        catalogan db check && catalogan worker
    """
    url, exists = _existing(database_url, folder_may_exist_alone=True)
    revision = migrate.current(url, create=False) if exists else None  # a missing file: an empty database
    head = migrate.head_revision()
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
