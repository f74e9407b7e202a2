"""Fixtures of the fault tests: the pipeline stack on real services, and services the test may break.

    stack            PostgreSQL + Redis + SeaweedFS, a tiny model registered, worker/beat processes stopped after
    private_redis    a redis-server of this test's own on a free loopback port (restartable; never the shared one)

Every test here is marked `faults` and `integration`; the long variants also `slow` and run only with
CATALOGAN_FAULTS_FULL=1.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from db.storage import ObjectStore
from tests.faults.services import RedisServer
from tests.pipeline import PipelineStack

# Long variants (30 s PostgreSQL outage, 20 kills over a bigger job) only when asked for.
FULL = os.environ.get("CATALOGAN_FAULTS_FULL", "") in {"1", "true", "yes"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test in this folder `faults` and `integration`."""
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.faults)
            item.add_marker(pytest.mark.integration)


@pytest.fixture
def stack(
    pg_url: str, redis_url: str, s3_store: ObjectStore, s3_env: dict[str, str], tmp_path: Path
) -> Iterator[PipelineStack]:
    """The pipeline on the shared Redis database of this process; processes are stopped afterwards."""
    pipeline = PipelineStack(
        db_url=pg_url, redis_url=redis_url, store=s3_store, s3_env=s3_env, folder=tmp_path
    )
    yield pipeline
    pipeline.close()


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server started for this test on a free port, without persistence; stopped afterwards."""
    server = RedisServer(tmp_path / "redis")
    try:
        server.start()
    except FileNotFoundError:
        from tests.conftest import service_missing

        service_missing("redis-server is not installed")
    yield server
    server.stop()
