"""Engines and sessions: one engine per process, built from `DatabaseSettings` in the entry point."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

from db.errors import ConfigError
from db.settings import DatabaseSettings, DataSettings

SQLITE_BUSY_TIMEOUT_SECONDS = 30
# Execution option of `read_only_session_factory`'s engine: its SQLite transactions begin DEFERRED.
READ_ONLY_OPTION = "catalogan_read_only"


def sqlite_file(url: str) -> Path | None:
    """The file a SQLite URL names; None for another database or an in-memory SQLite one."""
    if not url.startswith("sqlite"):
        return None
    path = url.split("///", 1)[1] if "///" in url else ""
    path = path.split("?", 1)[0]
    if not path or path == ":memory:":
        return None
    return Path(path)


def missing_sqlite_file(url: str) -> Path | None:
    """The SQLite file `url` names when it does not exist yet (`make_engine` would create it, and its folders);
    None when it exists or `url` is not a SQLite file. Commands that only read check this first."""
    path = sqlite_file(url)
    return path if path is not None and not path.exists() else None


def make_engine(url: str, *, echo: bool = False, pool_size: int = 5, create: bool = True) -> Engine:
    """Create an engine; SQLite gets WAL, a busy timeout and foreign keys so several processes can share it.

    A SQLite file that does not exist yet is created on first connect, its folders here. With `create=False`
    (commands that only read) a missing one is a `ConfigError` instead, and nothing is created.
    """
    if url.startswith("sqlite"):
        path = sqlite_file(url)
        if path is not None:
            if not create and not path.exists():
                raise ConfigError(
                    f"the SQLite database file {str(path)!r} does not exist (`catalogan db upgrade` creates it)"
                )
            if create:
                path.parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url, echo=echo, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_SECONDS, "check_same_thread": False}
        )

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            # Let SQLAlchemy, not pysqlite, emit BEGIN — and make it BEGIN IMMEDIATE so that two writers
            # serialize at the start of a transaction instead of deadlocking on a lock upgrade.
            dbapi_conn.isolation_level = None
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_SECONDS * 1000}")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn: Any) -> None:
            # A session of `read_only_session_factory` only reads: BEGIN DEFERRED takes no lock under WAL, so a
            # reader (an export, finalize's page reads, a progress poll) never holds up a writer.
            read_only = conn.get_execution_options().get(READ_ONLY_OPTION, False)
            conn.exec_driver_sql("BEGIN DEFERRED" if read_only else "BEGIN IMMEDIATE")

        return engine
    return create_engine(url, echo=echo, pool_size=pool_size, pool_pre_ping=True, max_overflow=pool_size)


def engine_from_settings(db: DatabaseSettings | None = None, data: DataSettings | None = None) -> Engine:
    """Build the process's engine from settings (read from the environment when not given)."""
    db = db or DatabaseSettings()
    return make_engine(db.url(data), echo=db.database_echo, pool_size=db.database_pool_size)


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    """A session factory that keeps loaded attributes usable after commit."""
    return sessionmaker(engine, expire_on_commit=False)


def read_only_session_factory(factory: sessionmaker[Session]) -> sessionmaker[Session]:
    """Sessions on `factory`'s engine for work that only reads. On SQLite, where every other transaction begins
    IMMEDIATE and so holds the one write lock until it ends, theirs begin DEFERRED: under WAL a reader takes no
    lock and sees a snapshot, and writers go on. On PostgreSQL they are ordinary sessions. Writing through one
    is a mistake (on SQLite it waits for the write lock mid-transaction and may fail with "database is locked")."""
    engine = factory.kw.get("bind")
    if not isinstance(engine, Engine) or engine.dialect.name != "sqlite":
        return factory
    return sessionmaker(engine.execution_options(**{READ_ONLY_OPTION: True}), expire_on_commit=False)


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """One unit of work: commit on success, roll back on any exception."""
    with factory() as session, session.begin():
        yield session
