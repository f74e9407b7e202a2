"""`read_only_session_factory`: on SQLite a session that only reads takes no lock, so it never holds up a writer
(every other SQLite transaction begins IMMEDIATE and holds the one write lock until it ends)."""

from __future__ import annotations

import sqlite3

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session, sessionmaker

from db.engine import make_session_factory, read_only_session_factory

WRITER_WAIT_SECONDS = 0.5
SQLITE = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


def _another_process_writes(db_url: str) -> str:
    """Try one write from another connection, waiting at most WRITER_WAIT_SECONDS: 'ok' or the error."""
    other = sqlite3.connect(db_url.split("///", 1)[1], timeout=WRITER_WAIT_SECONDS, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        other.execute("INSERT INTO scratch (x) VALUES (1)")
        other.execute("COMMIT")
        return "ok"
    except sqlite3.OperationalError as exc:
        return str(exc)
    finally:
        other.close()


def _rows(session: Session) -> int:
    return int(session.execute(text("SELECT count(*) FROM scratch")).scalar_one())


@pytest.fixture
def factory(db_engine: Engine) -> sessionmaker[Session]:
    """The ordinary session factory, on a database holding an empty `scratch` table."""
    with db_engine.begin() as connection:
        connection.execute(text("CREATE TABLE scratch (x INTEGER)"))
    return make_session_factory(db_engine)


@SQLITE
def test_an_open_read_only_session_does_not_hold_up_a_writer(
    factory: sessionmaker[Session], db_url: str
) -> None:
    # Given a read-only session in the middle of a read transaction
    reads = read_only_session_factory(factory)
    with reads() as session:
        assert _rows(session) == 0 and session.in_transaction()
        # When another process writes, then it commits at once
        assert _another_process_writes(db_url) == "ok"
        # And the reader keeps its snapshot until its transaction ends
        assert _rows(session) == 0
    with reads() as session:
        assert _rows(session) == 1


@SQLITE
def test_an_open_ordinary_session_holds_the_write_lock(factory: sessionmaker[Session], db_url: str) -> None:
    """Why the read-only sessions exist: an ordinary SQLite session's transaction begins IMMEDIATE."""
    with factory() as session:
        assert _rows(session) == 0
        assert _another_process_writes(db_url) == "database is locked"


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_on_postgresql_the_factory_is_the_ordinary_one(factory: sessionmaker[Session]) -> None:
    assert read_only_session_factory(factory) is factory
