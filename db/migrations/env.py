"""Alembic environment: migrations compare against `db.tables.Base.metadata`.

Run through `db.migrate` (or `catalogan db ...`), which passes the URL or an open connection in
`config.attributes`; the plain `alembic` command works too from the repository root (it reads
`[tool.alembic]` in pyproject.toml) and then takes the URL from `CATALOGAN_DATABASE_URL`.
"""

from __future__ import annotations

from typing import Any

from alembic import context
from sqlalchemy import Connection

from db.engine import make_engine
from db.settings import DatabaseSettings
from db.tables import Base, UTCDateTime

config = context.config
target_metadata = Base.metadata


def render_item(type_: str, obj: Any, autogen_context: Any) -> str | bool:
    """Render our column types as plain SQLAlchemy types, so revisions never import application code."""
    if type_ == "type" and isinstance(obj, UTCDateTime):
        return "sa.DateTime(timezone=True)"
    return False


def configure_options(connection: Connection) -> dict[str, Any]:
    """The options shared by migrations and the schema check (`db.migrate.check_schema`)."""
    return {
        "connection": connection,
        "target_metadata": target_metadata,
        "compare_type": True,
        "compare_server_default": False,
        # SQLite cannot ALTER most things: batch mode copies the table instead.
        "render_as_batch": connection.dialect.name == "sqlite",
        # Commit after each migration, so a table lock lasts one migration rather than the whole upgrade, and a
        # migration may build an index CONCURRENTLY in an autocommit block. `db.migrate` runs SQLite inside
        # one outer transaction, where Alembic opens none of its own: all pending migrations commit together.
        "transaction_per_migration": True,
        "render_item": render_item,
    }


def _url() -> str:
    return str(
        config.attributes.get("url")
        or config.get_alembic_option("sqlalchemy.url")
        or DatabaseSettings().url()
    )


def run_migrations_offline() -> None:
    """Emit SQL to stdout instead of running it (`alembic upgrade head --sql`)."""
    context.configure(
        url=_url(),
        target_metadata=target_metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
        render_item=render_item,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    """Run migrations on the connection `db.migrate` handed over, or on a new engine for the URL."""
    connection = config.attributes.get("connection")
    if connection is not None:
        context.configure(**configure_options(connection))
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = make_engine(_url())
    try:
        with engine.connect() as conn:
            context.configure(**configure_options(conn))
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
