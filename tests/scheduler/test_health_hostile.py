"""`/readyz` and `/metrics` facing anyone who can reach them: readiness names the failing dependency without
its internal error text, metrics can require a bearer token, and scrapes reuse one cached aggregate instead
of scanning the tables each time. uvicorn on loopback, PostgreSQL, Redis (and a port where none listens)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import event, inspect
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from db.storage import ObjectStore
from scheduler.settings import ApiSettings
from tests.scheduler.conftest import LiveServer, serve_live_api
from tests.services import free_port


def test_readyz_names_the_failing_dependency_without_its_error_text(
    pg_factory: sessionmaker[Session],
    s3_store: ObjectStore,
    live_server_factory: Callable[[Any], LiveServer],
    tmp_path: Path,
) -> None:
    """Given the API whose Redis broker is a loopback port where nothing listens, when anyone asks /readyz,
    then 503 with broker `unavailable`, database and object store `ok`, and nothing of the internal error
    (no address, port, errno or exception text) in the body."""
    port = free_port()
    url = serve_live_api(
        ApiSettings(), pg_factory, f"redis://127.0.0.1:{port}/0", s3_store, tmp_path, live_server_factory
    )
    response = httpx.get(f"{url}/readyz", timeout=30)
    assert response.status_code == 503
    assert response.json() == {
        "status": "unavailable",
        "checks": {"database": "ok", "broker": "unavailable", "object_store": "ok"},
    }
    assert str(port) not in response.text and "refused" not in response.text.lower()


@pytest.fixture
def statements(pg_factory: sessionmaker[Session]) -> Iterator[list[str]]:
    """Every SQL statement sent through `pg_factory`'s engine during the test."""
    engine = pg_factory.kw["bind"]
    seen: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(statement)

    event.listen(engine, "before_cursor_execute", record)
    yield seen
    event.remove(engine, "before_cursor_execute", record)


def test_metrics_can_require_a_bearer_token(
    pg_factory: sessionmaker[Session],
    redis_url: str,
    s3_store: ObjectStore,
    live_server_factory: Callable[[Any], LiveServer],
    tmp_path: Path,
) -> None:
    """Given CATALOGAN_METRICS_TOKEN set, when /metrics is asked without the token or with another, then 401;
    with it, 200 with the pipeline families."""
    settings = ApiSettings(metrics_token="s3cret-token-for-scrapers")
    url = serve_live_api(settings, pg_factory, redis_url, s3_store, tmp_path, live_server_factory)
    with httpx.Client(base_url=url, timeout=30) as http:
        assert http.get("/metrics").status_code == 401
        assert http.get("/metrics", headers={"Authorization": "Bearer nope"}).status_code == 401
        response = http.get("/metrics", headers={"Authorization": "Bearer s3cret-token-for-scrapers"})
    assert response.status_code == 200
    assert "catalogan_jobs{" in response.text and "catalogan_images_per_second" in response.text


def test_twenty_scrapes_in_a_row_aggregate_the_tables_once(
    pg_factory: sessionmaker[Session],
    redis_url: str,
    s3_store: ObjectStore,
    live_server_factory: Callable[[Any], LiveServer],
    tmp_path: Path,
    statements: list[str],
) -> None:
    """Given the API with default settings, when /metrics is scraped 20 times in a row, then every answer
    carries the pipeline families and the jobs table was aggregated once (a cached aggregate), not 20 times."""
    url = serve_live_api(ApiSettings(), pg_factory, redis_url, s3_store, tmp_path, live_server_factory)
    with httpx.Client(base_url=url, timeout=30) as http:
        statements.clear()
        for _ in range(20):
            response = http.get("/metrics")
            assert response.status_code == 200
            assert "catalogan_jobs{" in response.text and "catalogan_images_per_second" in response.text
    scans = [s for s in statements if "FROM jobs" in s and "GROUP BY" in s]
    assert len(scans) == 1, f"{len(scans)} scans of jobs for 20 scrapes"


def test_images_created_at_has_an_index(pg_factory: sessionmaker[Session]) -> None:
    """Given the migrated schema, when its indexes are read, then images.created_at is the first column of one
    (the throughput query behind /metrics and every estimate reads the last hour of images)."""
    engine: Engine = pg_factory.kw["bind"]
    indexes = inspect(engine).get_indexes("images")
    assert any(index["column_names"][:1] == ["created_at"] for index in indexes), indexes
