"""Shared fixtures: databases, Redis and object stores, real ones wherever a service is involved.

    sqlite_url        a fresh SQLite file at the newest schema revision (per test)
    pg_url            a PostgreSQL database private to this pytest process, at head, emptied before each test
    empty_pg_url      a brand-new, empty PostgreSQL database (per test), for migration tests
    db_url            parametrized over both of the above ("sqlite", "postgresql")
    session_factory   a sessionmaker bound to `db_url`
    redis_url         a Redis database claimed by this process, flushed before and after each test
    memory_store      MemoryStore
    local_store       LocalStore in tmp_path
    s3_store          S3Store on a real SeaweedFS server (one per pytest process), under a prefix of its own
    object_store      parametrized over the three stores ("memory", "local", "s3")
    s3_env            the AWS_* variables that reach the SeaweedFS server, for subprocesses (workers)

A missing service skips the test locally and fails it when CI=true. Tests that use a real service are
marked `integration` automatically.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings
from sqlalchemy import Engine, make_url, text
from sqlalchemy.orm import Session, sessionmaker

from db import migrate
from db.engine import make_engine, make_session_factory
from db.storage import LocalStore, MemoryStore, ObjectStore, open_store
from db.tables import Base
from tests.services import TEST_BUCKET, SeaweedFS, ServiceUnavailable, claimed_redis_db, flush_keeping_claim

if os.environ.get("PYTEST_XDIST_WORKER"):
    # Under `-n 2` (the README's test command) two test processes share the cores: one math thread each in the
    # tests' own processes (torch reads these when imported), rather than each running a thread per core.
    # Workers the tests start set their own thread counts.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")

POSTGRES_ADMIN_URL = os.environ.get(
    "CATALOGAN_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
REDIS_SERVER_URL = os.environ.get("CATALOGAN_TEST_REDIS_URL", "redis://127.0.0.1:6379")
SERVICE_FIXTURES = frozenset(
    {"pg_url", "empty_pg_url", "pg_database_url", "redis_url", "s3_store", "s3_env", "seaweedfs"}
)


def in_ci() -> bool:
    """True when the tests run in CI (`CI=true`), where a missing service is a failure, not a skip."""
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


# Hypothesis: no per-example deadline anywhere (a GC pause or a busy core is not a bug), and in CI the same
# examples every run, so CI's verdict does not depend on the draw; locally each run explores new examples.
settings.register_profile("catalogan", deadline=None)
settings.register_profile("catalogan-ci", deadline=None, derandomize=True)
settings.load_profile("catalogan-ci" if in_ci() else "catalogan")


def service_missing(message: str) -> None:
    """Skip the test locally, fail it in CI."""
    if in_ci():
        pytest.fail(f"service missing in CI: {message}", pytrace=False)
    pytest.skip(f"service missing: {message}")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Refuse a collection in which two tests share an id; mark every test that touches a real service as
    `integration`.

    pytest-xdist addresses tests by id: of several tests with one id it runs one and drops the rest silently.
    """
    shared = sorted(nodeid for nodeid, count in Counter(item.nodeid for item in items).items() if count > 1)
    if shared:
        raise pytest.UsageError(f"{len(shared)} test ids are shared by several tests, e.g. {shared[0]}")
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        callspec = getattr(item, "callspec", None)
        params = callspec.params if callspec is not None else {}
        uses_service = bool(names & SERVICE_FIXTURES)
        uses_service |= "db_url" in names and params.get("db_url") == "postgresql"
        uses_service |= "object_store" in names and params.get("object_store") == "s3"
        if uses_service:
            item.add_marker(pytest.mark.integration)


# --- SQL -------------------------------------------------------------------------------------------------


def _admin_engine() -> Engine:
    return make_engine(POSTGRES_ADMIN_URL).execution_options(isolation_level="AUTOCOMMIT")


def create_pg_database(prefix: str) -> str:
    """Create a uniquely named database on the test server; return its URL. Skips/fails if PG is down."""
    name = f"{prefix}_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    engine = _admin_engine()
    try:
        with engine.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # OperationalError: server down, auth refused
        service_missing(f"PostgreSQL at {POSTGRES_ADMIN_URL}: {str(exc).splitlines()[0]}")
    finally:
        engine.dispose()
    return make_url(POSTGRES_ADMIN_URL).set(database=name).render_as_string(hide_password=False)


def drop_pg_database(url: str) -> None:
    """Drop a test database, disconnecting whoever is still connected."""
    name = make_url(url).database
    engine = _admin_engine()
    try:
        with engine.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        engine.dispose()


@pytest.fixture(scope="session")
def pg_database_url() -> Iterator[str]:
    """A PostgreSQL database private to this pytest process (`catalogan_test_<pid>_<hex>`), at head."""
    url = create_pg_database("catalogan_test")
    try:
        migrate.upgrade(url)
        yield url
    finally:
        drop_pg_database(url)


@pytest.fixture(scope="session")
def _pg_cleaner(pg_database_url: str) -> Iterator[Engine]:
    engine = make_engine(pg_database_url, pool_size=1)
    yield engine
    engine.dispose()


@pytest.fixture
def pg_url(pg_database_url: str, _pg_cleaner: Engine) -> str:
    """URL of this process's PostgreSQL database at the newest revision, with every table empty."""
    if migrate.current(pg_database_url) != migrate.head_revision():
        migrate.upgrade(pg_database_url)  # an earlier test downgraded it
    tables = ", ".join(f'"{table.name}"' for table in Base.metadata.sorted_tables)
    with _pg_cleaner.begin() as connection:
        connection.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    return pg_database_url


@pytest.fixture
def empty_pg_url() -> Iterator[str]:
    """URL of a new PostgreSQL database with no tables at all, dropped after the test."""
    url = create_pg_database("catalogan_empty")
    yield url
    drop_pg_database(url)


@pytest.fixture(scope="session")
def _sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Migrate once per session, then copy the file: a copy is far cheaper than running Alembic per test.
    path = tmp_path_factory.mktemp("sqlite-template") / "catalogan.db"
    migrate.upgrade(f"sqlite:///{path}")
    return path


@pytest.fixture
def sqlite_url(tmp_path: Path, _sqlite_template: Path) -> str:
    """URL of a SQLite file private to this test, at the newest revision, with no rows."""
    path = tmp_path / "catalogan.db"
    shutil.copyfile(_sqlite_template, path)
    return f"sqlite:///{path}"


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest) -> str:
    """A database URL at head with no rows: once on SQLite, once on PostgreSQL."""
    name = "sqlite_url" if request.param == "sqlite" else "pg_url"
    return str(request.getfixturevalue(name))


@pytest.fixture
def db_engine(db_url: str) -> Iterator[Engine]:
    """An engine on `db_url`, disposed after the test."""
    engine = make_engine(db_url)
    yield engine
    engine.dispose()


@pytest.fixture
def session_factory(db_engine: Engine) -> sessionmaker[Session]:
    """A session factory on `db_url` (expire_on_commit=False, as in production)."""
    return make_session_factory(db_engine)


# --- Redis -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def _redis_db() -> Iterator[tuple[Any, str]]:
    """Claim one of Redis's numbered databases (1..15) for this process with a lock key; free it at the end."""
    try:
        with claimed_redis_db(REDIS_SERVER_URL, f"{os.getpid()}-{uuid.uuid4().hex[:8]}") as claimed:
            yield claimed
    except ServiceUnavailable as exc:
        service_missing(str(exc))


@pytest.fixture
def redis_url(_redis_db: tuple[Any, str]) -> Iterator[str]:
    """URL of a Redis database owned by this process, empty (but for one lock key) before and after the test."""
    client, url = _redis_db
    flush_keeping_claim(client)
    yield url
    flush_keeping_claim(client)


# --- Object stores ---------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedFS]:
    """A SeaweedFS server with an S3 gateway on free loopback ports, for the whole session."""
    server = SeaweedFS(tmp_path_factory.mktemp("seaweedfs"))
    try:
        server.start()
    except ServiceUnavailable as exc:
        service_missing(f"SeaweedFS: {exc}")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_env(seaweedfs: SeaweedFS) -> dict[str, str]:
    """AWS_* variables (endpoint, dummy credentials, region) that reach the test S3 server.

    Merge them into a subprocess's environment: `{**os.environ, **s3_env}`.
    """
    return seaweedfs.env()


@pytest.fixture
def s3_store(s3_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> ObjectStore:
    """An S3Store on SeaweedFS under a prefix no other test uses; AWS_* are set in os.environ for the test."""
    for name, value in s3_env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    return open_store(f"s3://{TEST_BUCKET}/t-{uuid.uuid4().hex[:12]}")


@pytest.fixture
def memory_store() -> MemoryStore:
    """An empty in-memory store."""
    return MemoryStore()


@pytest.fixture
def local_store(tmp_path: Path) -> LocalStore:
    """An empty local-folder store in the test's tmp_path."""
    store = open_store((tmp_path / "objects").as_uri())
    assert isinstance(store, LocalStore)
    return store


@pytest.fixture(params=["memory", "local", "s3"])
def object_store(request: pytest.FixtureRequest) -> ObjectStore:
    """Each backend in turn: in-memory, a local folder, and S3 on SeaweedFS."""
    store: ObjectStore = request.getfixturevalue(f"{request.param}_store")
    return store
