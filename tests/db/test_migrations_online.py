"""Upgrading a running stack on PostgreSQL: writers keep writing while indexes build, a busy table makes the
upgrade wait briefly and retry (never queue everyone behind it), and a failed index build can be rerun."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
from alembic import command
from sqlalchemy import Connection, text

from db import migrate
from db.engine import make_engine

WAIT_SECONDS = 60

# One new row per call of each writer; `n` keeps the unique keys apart. Columns added after 0001 have defaults.
WRITES = {
    "images": (
        'INSERT INTO images (job_id, chunk_id, "index", category, status, redraws, attempt, created_at) '
        "VALUES ('job1', 1, :n, 'shirt', 'succeeded', 0, 0, now())"
    ),
    "job_items": (
        "INSERT INTO job_items (job_id, position, category, class_index, count, first_index, skipped_existing) "
        "VALUES ('job1', :n, 'shirt', 0, 1, :n, false)"
    ),
    "jobs": (
        "INSERT INTO jobs (id, tenant_id, model_version_id, status, seed, output_format, chunk_size, queue, "
        "options, images_total, images_done, images_failed, images_rejected, chunks_total, chunks_finished, "
        "cancel_requested, created_at) VALUES ('job' || :n, 'tenant1', 1, 'queued', 0, 'png', 64, 'bulk', '{}', "
        "1, 0, 0, 0, 1, 0, false, now())"
    ),
}


def _seed(url: str) -> None:
    """One tenant, model version, job (job1), item and chunk (id 1): what an image row points at."""
    engine = make_engine(url)
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO tenants (id, name, images_per_day, max_concurrent_jobs, requests_per_minute, "
                "created_at) VALUES ('tenant1', 'acme', 1000, 2, 60, now())"
            )
        )
        connection.execute(
            text(
                "INSERT INTO model_versions (name, version, preset, architecture, config, categories, "
                "checkpoint_uri, checkpoint_sha256, data_fingerprint, metrics, status, created_at) VALUES "
                "('fashion-cgan', 1, 'tiny', 'cgan', '{}', '[]', 'file:///c.pt', 'x', 'x', '{}', 'production', "
                "now())"
            )
        )
        connection.execute(text(WRITES["jobs"]), {"n": 1})
        connection.execute(text(WRITES["job_items"]), {"n": 0})
        connection.execute(
            text(
                "INSERT INTO chunks (job_id, item_id, start_index, stop_index, status, attempt, images_done, "
                "images_failed, images_rejected) VALUES ('job1', 1, 0, 1, 'leased', 1, 0, 0, 0)"
            )
        )
    engine.dispose()


@contextmanager
def _connection(url: str) -> Iterator[Connection]:
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            yield connection
    finally:
        engine.dispose()


@contextmanager
def _upgrade_in_background(url: str) -> Iterator[Callable[[], migrate.MigrationResult]]:
    """Start `migrate.upgrade(url)` in a thread; yield a function that waits for its result."""
    outcome: list[migrate.MigrationResult | BaseException] = []

    def run() -> None:
        try:
            outcome.append(migrate.upgrade(url))
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()

    def result() -> migrate.MigrationResult:
        thread.join(timeout=WAIT_SECONDS)
        assert outcome, "the upgrade did not finish"
        if isinstance(outcome[0], BaseException):
            raise outcome[0]
        return outcome[0]

    try:
        yield result
    finally:
        thread.join(timeout=WAIT_SECONDS)


def _wait_for_index_build(connection: Connection, index: str) -> None:
    """Return once another session is running the CREATE INDEX of `index` (building, or waiting to)."""
    query = text(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND state = 'active' "
        "AND pid <> pg_backend_pid() AND query ILIKE 'CREATE%INDEX%' || :index || '%'"
    )
    deadline = time.monotonic() + WAIT_SECONDS
    while not connection.execute(query, {"index": index}).scalar_one():
        connection.rollback()
        assert time.monotonic() < deadline, f"no CREATE INDEX {index} seen"
        time.sleep(0.05)
    connection.rollback()


def _index_state(connection: Connection, index: str) -> tuple[bool, bool] | None:
    """(valid, unique) of the index named `index`, None when there is none."""
    row = connection.execute(
        text(
            "SELECT i.indisvalid, i.indisunique FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
            "WHERE c.relname = :index"
        ),
        {"index": index},
    ).one_or_none()
    connection.rollback()
    return None if row is None else (row[0], row[1])


@pytest.mark.parametrize(
    ("start", "table", "index"),
    [
        ("0002", "images", "ix_images_created_at"),
        ("0007", "job_items", "ix_job_items_job_id_first_index"),
        ("0008", "jobs", "ix_jobs_tenant_id_model_version_id"),
    ],
)
def test_upgrade_builds_an_index_while_writers_keep_inserting(
    empty_pg_url: str, start: str, table: str, index: str
) -> None:
    """Given a database before the migration that indexes `table`, and a worker with an uncommitted insert into
    it, when the upgrade builds that index, then another insert with lock_timeout=2s succeeds meanwhile, the
    worker commits, and the upgrade reaches head with a valid index and the declared schema."""
    migrate.upgrade(empty_pg_url, start)
    _seed(empty_pg_url)
    with _connection(empty_pg_url) as worker, _connection(empty_pg_url) as other:
        worker.execute(text(WRITES[table]), {"n": 10})  # left uncommitted while the upgrade starts
        with _upgrade_in_background(empty_pg_url) as upgrade_result:
            try:
                _wait_for_index_build(other, index)

                other.execute(text("SET lock_timeout = '2s'"))
                other.execute(text(WRITES[table]), {"n": 11})
                other.commit()
                worker.commit()
            finally:
                worker.rollback()  # on failure: let the upgrade go on, so the thread ends
            result = upgrade_result()

        assert (result.before, result.after) == (start, migrate.head_revision())
        assert _index_state(other, index) == (True, False)
        # Both inserts are there, next to the seeded rows (one job, one item, no image).
        assert other.execute(text(f"SELECT count(*) FROM {table}")).scalar_one() == (
            2 if table == "images" else 3
        )
    assert migrate.check_schema(empty_pg_url) == []


def test_upgrade_gives_up_on_a_busy_table_naming_it_and_keeps_earlier_migrations(
    empty_pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Given a session that keeps `chunks` open in a transaction, when an upgrade from 0002 needs to ALTER it
    (0004), then each try waits only lock_timeout, and after the last one the upgrade stops with an error naming
    `chunks`, 0003 committed; once that session ends, the upgrade goes on to head."""
    monkeypatch.setattr(migrate, "LOCK_TIMEOUT_SECONDS", 0.2)
    monkeypatch.setattr(migrate, "LOCK_ATTEMPTS", 2)
    monkeypatch.setattr(migrate, "LOCK_RETRY_PAUSE_SECONDS", 0.0)
    migrate.upgrade(empty_pg_url, "0002")
    _seed(empty_pg_url)
    with _connection(empty_pg_url) as reader:
        reader.execute(text("SELECT count(*) FROM chunks"))  # holds ACCESS SHARE on chunks until it ends

        started = time.monotonic()
        with pytest.raises(migrate.TableBusyError, match=r"stopped at 0003: table 'chunks'") as caught:
            migrate.upgrade(empty_pg_url)

        assert time.monotonic() - started < 20
        assert caught.value.table == "chunks"
        assert migrate.current(empty_pg_url) == "0003"
        reader.rollback()

    assert migrate.upgrade(empty_pg_url).after == migrate.head_revision()
    assert migrate.check_schema(empty_pg_url) == []


def test_upgrade_retries_a_busy_table_until_it_is_free(
    empty_pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Given a session holding `chunks` for about a second, when the upgrade's ALTER times out on it, then it
    tries again and reaches head without an error."""
    monkeypatch.setattr(migrate, "LOCK_TIMEOUT_SECONDS", 0.3)
    monkeypatch.setattr(migrate, "LOCK_ATTEMPTS", 30)
    monkeypatch.setattr(migrate, "LOCK_RETRY_PAUSE_SECONDS", 0.1)
    migrate.upgrade(empty_pg_url, "0003")
    with _connection(empty_pg_url) as reader:
        reader.execute(text("SELECT count(*) FROM chunks"))
        release = threading.Timer(1.0, reader.rollback)
        release.start()
        try:
            result = migrate.upgrade(empty_pg_url)
        finally:
            release.join()

    assert (result.before, result.after) == ("0003", migrate.head_revision())


def test_upgrade_replaces_an_index_a_failed_concurrent_build_left_invalid(empty_pg_url: str) -> None:
    """Given a database at 0002 holding an INVALID ix_images_created_at (what a failed CREATE INDEX
    CONCURRENTLY leaves behind), when upgrading, then the index is rebuilt valid and the schema matches."""
    migrate.upgrade(empty_pg_url, "0002")
    _seed(empty_pg_url)
    engine = make_engine(empty_pg_url).execution_options(isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.execute(text(WRITES["images"].replace("now()", "'2026-01-01T00:00:00Z'")), {"n": 1})
        connection.execute(text(WRITES["images"].replace("now()", "'2026-01-01T00:00:00Z'")), {"n": 2})
        with pytest.raises(Exception, match="could not create unique index"):
            connection.execute(
                text("CREATE UNIQUE INDEX CONCURRENTLY ix_images_created_at ON images (created_at)")
            )
        assert _index_state(connection, "ix_images_created_at") == (False, True)

        assert migrate.upgrade(empty_pg_url).after == migrate.head_revision()

        assert _index_state(connection, "ix_images_created_at") == (True, False)
    engine.dispose()
    assert migrate.check_schema(empty_pg_url) == []


def test_downgrade_drops_the_concurrent_indexes(empty_pg_url: str) -> None:
    """Given a database at head, downgrading to 0002 drops the three indexes built concurrently."""
    migrate.upgrade(empty_pg_url)

    assert migrate.downgrade(empty_pg_url, "0002").after == "0002"

    with _connection(empty_pg_url) as connection:
        for index in (
            "ix_images_created_at",
            "ix_job_items_job_id_first_index",
            "ix_jobs_tenant_id_model_version_id",
        ):
            assert _index_state(connection, index) is None


def test_offline_sql_builds_the_index_concurrently_outside_a_transaction(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Given `alembic upgrade 0002:0003 --sql` for PostgreSQL, the script commits before the index and builds it
    with CREATE INDEX CONCURRENTLY IF NOT EXISTS (no database is opened)."""
    config = migrate.alembic_config("postgresql+psycopg://nobody@localhost/none")

    command.upgrade(config, "0002:0003", sql=True)

    script = capsys.readouterr().out
    build = script.index(
        "CREATE INDEX CONCURRENTLY IF NOT EXISTS ix_images_created_at ON images (created_at)"
    )
    assert "COMMIT" in script[:build]
