"""Schema migrations as functions: upgrade, downgrade, current revision, and a schema-vs-tables check.

The Alembic config is built here in code (script location = the `db/migrations` folder next to this file),
so migrations run the same from a source checkout and from an installed wheel. From the repository root the
plain `alembic` command works as well: it reads `[tool.alembic]` in pyproject.toml.

On PostgreSQL an upgrade runs while the stack keeps working (docs/configuration.md, "Upgrading a running
stack"): each migration commits on its own, an index on an existing table is built `CONCURRENTLY`
(`create_index_concurrently`), and every other statement waits at most `LOCK_TIMEOUT_SECONDS` for a table
lock — an ALTER queued behind a long transaction would otherwise queue every reader and writer of that table
behind itself — and is retried `LOCK_ATTEMPTS` times before `TableBusyError`. SQLite runs all pending
migrations in one transaction, as it always has.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alembic import command, op
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.script.revision import RevisionError
from alembic.util import CommandError
from sqlalchemy import Connection, Engine, inspect, text
from sqlalchemy.exc import DBAPIError, OperationalError

from db.engine import make_engine
from db.errors import ConfigError, DbError, ServiceUnavailableError
from db.tables import Base

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
# PostgreSQL advisory-lock key held while migrating ("catalogan" in ASCII, fits in int64).
MIGRATION_LOCK_KEY = 0x636174616C6F67
# How often a second upgrader asks for that lock while the first one migrates.
MIGRATION_LOCK_POLL_SECONDS = 0.5
# PostgreSQL `lock_timeout` of each migration statement, the attempts per blocked statement and the pause between.
LOCK_TIMEOUT_SECONDS = 5.0
LOCK_ATTEMPTS = 6
LOCK_RETRY_PAUSE_SECONDS = 5.0
# SQLSTATE of "canceling statement due to lock timeout" (psycopg's LockNotAvailable).
_LOCK_NOT_AVAILABLE = "55P03"
# The table a blocked statement was after: ALTER TABLE x, UPDATE x, INSERT INTO x, DELETE FROM x, ... ON x.
_STATEMENT_TABLE = re.compile(
    r"\b(?:ALTER TABLE|UPDATE|INTO|FROM|ON|DROP TABLE|LOCK TABLE)\s+(?:ONLY\s+)?(?:IF EXISTS\s+)?\"?(\w+)",
    re.IGNORECASE,
)
_RELATIVE_REVISION = re.compile(r"[+-]\d+$")


@dataclass(frozen=True, slots=True)
class MigrationResult:
    """What an upgrade or downgrade did: the revision before and after (None = empty schema)."""

    url: str
    before: str | None
    after: str | None

    @property
    def changed(self) -> bool:
        """True when the revision moved."""
        return self.before != self.after


def alembic_config(url: str | None = None) -> Config:
    """An Alembic `Config` pointing at catalogan's migrations (and at `url`, when given)."""
    config = Config()
    # Config values go through ConfigParser interpolation: a literal % must be doubled.
    config.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
    if url is not None:
        config.attributes["url"] = url
    return config


def head_revision() -> str:
    """The newest revision shipped with this version of catalogan."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:  # pragma: no cover - the package always ships at least one revision
        raise RuntimeError("no migrations found in " + str(MIGRATIONS_DIR))
    return head


class UnknownRevisionError(ConfigError, ValueError):
    """A target revision that names no migration shipped with this version (`check_revision`)."""


class DowngradeTargetError(DbError, ValueError):
    """Raised when a downgrade's target revision is newer than the database's: a downgrade only goes down."""


class TableBusyError(ServiceUnavailableError):
    """Raised when a migration statement could not lock its table within `LOCK_TIMEOUT_SECONDS`, `LOCK_ATTEMPTS`
    times: other sessions kept it busy. The migrations before it are committed; running it again goes on."""

    def __init__(self, message: str, *, table: str | None) -> None:
        super().__init__(message)
        self.table = table


def check_revision(revision: str) -> str:
    """`revision` when it names shipped migrations (`head`, `base`, an id or a unique prefix of one, `branch@head`);
    `UnknownRevisionError` with Alembic's reason otherwise — checked before any database is opened, so a typo
    changes nothing. A relative target (`-1`, `0010+1`) depends on the database and is left to the migration."""
    if revision == "base" or _RELATIVE_REVISION.search(revision):
        return revision
    try:
        ScriptDirectory.from_config(alembic_config()).revision_map.get_revisions(revision)
    except RevisionError as exc:
        raise UnknownRevisionError(str(exc)) from None
    return revision


def _current(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


def _downgrade_has_work(before: str | None, revision: str) -> bool:
    """False when the database is at `revision` already; `DowngradeTargetError` when `revision` is newer.

    Alembic reports both as "not a valid downgrade target" (a CommandError). A relative target, `base`, or a
    revision on another branch is left to Alembic."""
    if revision == "base" or _RELATIVE_REVISION.search(revision):
        return True
    script = ScriptDirectory.from_config(alembic_config())
    try:
        target = script.get_revision(revision)
        if target is None:
            return True
        if target.revision == before:
            return False
        # Raises RangeNotAncestorError unless the database's revision lies below the target.
        list(script.iterate_revisions(target.revision, before or "base"))
    except RevisionError:
        return True
    raise DowngradeTargetError(
        f"REVISION {revision!r} is newer than the database's revision {before or '<empty>'}: a downgrade only "
        f"goes to an older revision (`catalogan db upgrade --revision {revision}` goes up)"
    )


def _alembic(connection: Connection, url: str, action: str, revision: str) -> None:
    config = alembic_config(url)
    config.attributes["connection"] = connection
    try:
        getattr(command, action)(config, revision)
    except CommandError as exc:  # multiple heads, a relative target past base or head, ...
        raise ConfigError(f"{action} to {revision!r} failed: {exc}") from exc


def _run(url: str, action: str, revision: str) -> MigrationResult:
    engine = make_engine(url)
    try:
        if engine.dialect.name == "postgresql":
            before, after = _run_postgresql(engine, url, action, revision)
        else:
            # SQLite: every pending migration in one transaction (SQLite serializes writers by itself).
            with engine.begin() as connection:
                before = after = _current(connection)
                if action == "upgrade" or _downgrade_has_work(before, revision):
                    _alembic(connection, url, action, revision)
                    after = _current(connection)
    finally:
        engine.dispose()
    return MigrationResult(url=_safe_url(engine), before=before, after=after)


def _run_postgresql(engine: Engine, url: str, action: str, revision: str) -> tuple[str | None, str | None]:
    """Migrate under the session advisory lock, one transaction per migration (env.py), retrying a statement
    that hit `lock_timeout`. Returns the revisions before and after."""
    with engine.connect() as connection:
        _lock_migrations(connection)
        try:
            connection.execute(
                text("SELECT set_config('lock_timeout', :value, false)"),
                {"value": f"{round(LOCK_TIMEOUT_SECONDS * 1000)}ms"},
            )
            before = _current(connection)
            # Alembic manages its own transactions only on a connection that is not in one already.
            connection.commit()
            if action == "downgrade" and not _downgrade_has_work(before, revision):
                return before, before
            # A relative target moves from wherever the last attempt stopped: never retried.
            attempts = 1 if _RELATIVE_REVISION.search(revision) else max(1, LOCK_ATTEMPTS)
            for attempt in range(1, attempts + 1):
                try:
                    _alembic(connection, url, action, revision)
                    break
                except OperationalError as exc:
                    connection.rollback()
                    if getattr(exc.orig, "sqlstate", None) != _LOCK_NOT_AVAILABLE:
                        raise
                    if attempt == attempts:
                        raise _table_busy(connection, exc, action, revision, attempts) from exc
                    time.sleep(LOCK_RETRY_PAUSE_SECONDS)
            after = _current(connection)
            connection.commit()
            return before, after
        finally:
            _unlock_migrations(connection)


def _lock_migrations(connection: Connection) -> None:
    # Two processes upgrading at once (API and worker starting together) run one after the other; the second
    # then finds the schema at head. It polls, outside any transaction, rather than waiting in
    # pg_advisory_lock: a waiting statement holds a snapshot, and CREATE INDEX CONCURRENTLY waits for every
    # snapshot older than its own — a deadlock with the upgrader it waits for.
    lock = text("SELECT pg_try_advisory_lock(:key)")
    while not connection.execute(lock, {"key": MIGRATION_LOCK_KEY}).scalar_one():
        connection.commit()
        time.sleep(MIGRATION_LOCK_POLL_SECONDS)
    connection.commit()


def _unlock_migrations(connection: Connection) -> None:
    try:
        connection.rollback()
        connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": MIGRATION_LOCK_KEY})
        connection.commit()
    except DBAPIError:
        pass  # the connection broke: its session ended on the server, and the lock with it


def _table_busy(
    connection: Connection, exc: OperationalError, action: str, revision: str, attempts: int
) -> TableBusyError:
    match = _STATEMENT_TABLE.search(exc.statement or "")
    table = match.group(1) if match else None
    reached = _current(connection)
    connection.rollback()
    busy = f"table {table!r}" if table else "a table"
    return TableBusyError(
        f"{action} to {revision!r} stopped at {reached or '<empty>'}: {busy} stayed locked by other sessions "
        f"({attempts} tries of {LOCK_TIMEOUT_SECONDS:g} s); the migrations before are committed: run it again "
        "once their long transactions end (pg_stat_activity shows them)",
        table=table,
    )


def _safe_url(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=True)


def upgrade(url: str, revision: str = "head") -> MigrationResult:
    """Migrate the database at `url` up to `revision` (default: the newest).

    PostgreSQL: one transaction per migration, so writers keep going (`TableBusyError` when a table stays
    locked); SQLite: all in one transaction."""
    return _run(url, "upgrade", revision)


def downgrade(url: str, revision: str) -> MigrationResult:
    """Migrate the database at `url` down to `revision` (`base` = drop every catalogan table).

    A database already at `revision` is left alone; a `revision` newer than the database's is a
    `DowngradeTargetError` (a ValueError: bad input), and nothing changes."""
    return _run(url, "downgrade", revision)


def current(url: str, *, create: bool = True) -> str | None:
    """The revision the database at `url` is at, or None when it has never been migrated.

    `create=False`: a SQLite file that does not exist is a `ConfigError`, not created (`db.engine.make_engine`).
    """
    engine = make_engine(url, create=create)
    try:
        with engine.connect() as connection:
            return _current(connection)
    finally:
        engine.dispose()


def check_schema(url: str) -> list[Any]:
    """Differences between `db.tables` and the database at `url` (Alembic autogenerate diffs); [] = in sync.

    Run it after `upgrade(url)` to prove that the migrations create exactly the tables the code declares.
    """
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(
                connection, opts={"compare_type": True, "compare_server_default": False}
            )
            return list(compare_metadata(context, Base.metadata))
    finally:
        engine.dispose()


def table_columns(url: str) -> dict[str, list[str]]:
    """{table: [column, ...]} of the database at `url`, without Alembic's own version table."""
    engine = make_engine(url)
    try:
        inspector = inspect(engine)
        return {
            table: [column["name"] for column in inspector.get_columns(table)]
            for table in sorted(inspector.get_table_names())
            if table != "alembic_version"
        }
    finally:
        engine.dispose()


def create_index_concurrently(name: str, table: str, columns: Sequence[str]) -> None:
    """In a migration: add an index to an existing table without blocking its writers.

    PostgreSQL: `CREATE INDEX CONCURRENTLY IF NOT EXISTS` outside the migration's transaction (it commits what
    came before in that migration: keep it the migration's only statement). It waits for transactions already
    writing the table, with no lock timeout, since waiting blocks nobody. A concurrent build that failed leaves
    an INVALID index behind; a rerun drops that first. SQLite: a plain CREATE INDEX, as before.
    """
    context = op.get_context()
    if context.dialect.name != "postgresql":
        op.create_index(name, table, list(columns), unique=False)
        return
    with context.autocommit_block(), _no_lock_timeout(context):
        if not context.as_sql and _index_is_invalid(context, name):
            op.drop_index(name, table_name=table, postgresql_concurrently=True, if_exists=True)
        op.create_index(
            name, table, list(columns), unique=False, postgresql_concurrently=True, if_not_exists=True
        )


def drop_index_concurrently(name: str, table: str) -> None:
    """In a migration: drop an index without blocking its table's writers (the downgrade of
    `create_index_concurrently`; PostgreSQL `DROP INDEX CONCURRENTLY IF EXISTS`, SQLite a plain DROP INDEX)."""
    context = op.get_context()
    if context.dialect.name != "postgresql":
        op.drop_index(name, table_name=table)
        return
    with context.autocommit_block(), _no_lock_timeout(context):
        op.drop_index(name, table_name=table, postgresql_concurrently=True, if_exists=True)


@contextmanager
def _no_lock_timeout(context: MigrationContext) -> Iterator[None]:
    """Lift `lock_timeout` for the statements inside (a session setting: the block runs in autocommit)."""
    connection = context.connection
    if context.as_sql or connection is None:
        yield
        return
    previous = connection.execute(text("SELECT current_setting('lock_timeout')")).scalar_one()
    connection.execute(text("SELECT set_config('lock_timeout', '0', false)"))
    try:
        yield
    finally:
        connection.execute(text("SELECT set_config('lock_timeout', :value, false)"), {"value": previous})


def _index_is_invalid(context: MigrationContext, name: str) -> bool:
    assert context.connection is not None
    query = text(
        "SELECT NOT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
        "WHERE c.relname = :name AND c.relnamespace = current_schema()::regnamespace"
    )
    return bool(context.connection.execute(query, {"name": name}).scalar())
