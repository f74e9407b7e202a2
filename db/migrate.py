"""Schema migrations as functions: upgrade, downgrade, current revision, and a schema-vs-tables check.

The Alembic config is built here in code (script location = the `db/migrations` folder next to this file),
so migrations run the same from a source checkout and from an installed wheel. From the repository root the
plain `alembic` command works as well: it reads `[tool.alembic]` in pyproject.toml.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.script.revision import RevisionError
from alembic.util import CommandError
from sqlalchemy import Connection, Engine, inspect, text

from db.engine import make_engine
from db.errors import ConfigError
from db.tables import Base

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
# PostgreSQL advisory-lock key taken for the duration of a migration ("catalogan" in ASCII, fits in int64).
MIGRATION_LOCK_KEY = 0x636174616C6F67


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


def check_revision(revision: str) -> str:
    """`revision` when it names shipped migrations (`head`, `base`, an id or a unique prefix of one, `branch@head`);
    `UnknownRevisionError` with Alembic's reason otherwise — checked before any database is opened, so a typo
    changes nothing. A relative target (`-1`, `0010+1`) depends on the database and is left to the migration."""
    if revision == "base" or re.search(r"[+-]\d+$", revision):
        return revision
    try:
        ScriptDirectory.from_config(alembic_config()).revision_map.get_revisions(revision)
    except RevisionError as exc:
        raise UnknownRevisionError(str(exc)) from None
    return revision


def _current(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


def _run(url: str, action: str, revision: str) -> MigrationResult:
    engine = make_engine(url)
    try:
        with engine.begin() as connection:
            if connection.dialect.name == "postgresql":
                # Two processes upgrading at once (API and worker starting together) run one after the other;
                # the second then finds the schema at head. SQLite serializes writers by itself.
                connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
            before = _current(connection)
            config = alembic_config(url)
            config.attributes["connection"] = connection
            try:
                getattr(command, action)(config, revision)
            except CommandError as exc:  # unknown revision, multiple heads, ...
                raise ConfigError(f"{action} to {revision!r} failed: {exc}") from exc
            after = _current(connection)
    finally:
        engine.dispose()
    return MigrationResult(url=_safe_url(engine), before=before, after=after)


def _safe_url(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=True)


def upgrade(url: str, revision: str = "head") -> MigrationResult:
    """Migrate the database at `url` up to `revision` (default: the newest), in one transaction."""
    return _run(url, "upgrade", revision)


def downgrade(url: str, revision: str) -> MigrationResult:
    """Migrate the database at `url` down to `revision` (`base` = drop every catalogan table)."""
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
