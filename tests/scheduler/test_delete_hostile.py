"""`DELETE /v1/jobs/{id}` under a hostile tenant: one deletion per job at a time (a concurrent DELETE of the
same job answers 202 without deleting anything), at most `DELETIONS_PER_TENANT` of one tenant running (429 with
Retry-After), on threads of their own, and the objects go in bulk (one `delete_many` per 1,000). uvicorn on
loopback and PostgreSQL; the store is an in-memory one whose deletes under a tenant's prefix wait for the test."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from db.engine import transaction
from db.job_deletion import DELETE_REQUEST_MAX_OBJECTS, delete_job, job_prefix
from db.planning import parse_job_spec, submit_job
from db.status import JobStatus
from db.storage import MemoryStore, ObjectStore
from db.storage.base import ObjectInfo, PresignedUrl
from db.tables import Job
from scheduler.api.routes.jobs import DELETION_RETRY_AFTER_SECONDS, DELETIONS_PER_TENANT
from scheduler.settings import ApiSettings, WebhookSettings
from tests.pipeline import wait_for
from tests.scheduler.conftest import Credentials, LiveServer, _app
from tests.scheduler.test_job_deletion import finished_job, rows_of

pytestmark = [pytest.mark.integration]

# "At once": well under the time the gated deletions are held, on a busy 2-core box.
AT_ONCE_SECONDS = 3.0
HTTP_TIMEOUT_SECONDS = 20.0


class GatedStore(ObjectStore):
    """A MemoryStore whose deletes of keys under `gated` prefixes wait until `release`; counts listings and
    the delete calls made."""

    def __init__(self) -> None:
        self.inner = MemoryStore()
        self.url = self.inner.url
        self.gated: set[str] = set()
        self.opened = threading.Event()
        self.waiting = 0
        self.listings: list[str] = []
        self.delete_calls = 0
        self._lock = threading.Lock()

    def _gate(self, keys: Sequence[str]) -> None:
        with self._lock:
            self.delete_calls += 1
            gated = any(key.startswith(prefix) for key in keys for prefix in self.gated)
            if gated:
                self.waiting += 1
        if gated:
            self.opened.wait(HTTP_TIMEOUT_SECONDS * 2)

    def release(self) -> None:
        """Let every waiting and later delete through."""
        self.opened.set()

    def put(self, key: str, data: bytes, *, content_type: str = "application/octet-stream") -> None:
        self.inner.put(key, data, content_type=content_type)

    def get(self, key: str) -> bytes:
        return self.inner.get(key)

    def exists(self, key: str) -> bool:
        return self.inner.exists(key)

    def delete(self, key: str) -> None:
        self._gate([key])
        self.inner.delete(key)

    def delete_many(self, keys: Sequence[str]) -> None:
        self._gate(keys)
        self.inner.delete_many(keys)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        with self._lock:
            self.listings.append(prefix)
        return self.inner.list(prefix)

    def presign(self, key: str, *, expires_in_seconds: int) -> PresignedUrl:
        return self.inner.presign(key, expires_in_seconds=expires_in_seconds)


def _timed(http: httpx.Client, method: str, path: str, tenant: Credentials) -> tuple[int, str | None, float]:
    """(status, Retry-After, seconds) of one request."""
    started = time.monotonic()
    response = http.request(method, path, headers=tenant.headers)
    return response.status_code, response.headers.get("retry-after"), time.monotonic() - started


@pytest.fixture
def store() -> Iterator[GatedStore]:
    gated = GatedStore()
    yield gated
    gated.release()  # never leave a server thread waiting on the gate


@pytest.fixture
def url(
    store: GatedStore,
    pg_factory: sessionmaker[Session],
    model_version: Any,
    live_server_factory: Callable[[Any], LiveServer],
    tmp_path: Path,
) -> str:
    """The API on loopback with the gated store."""
    app = _app(pg_factory, store, [], tmp_path, ApiSettings(), WebhookSettings())
    return live_server_factory(app).url


def test_concurrent_deletes_of_one_job_delete_it_once(
    url: str, store: GatedStore, pg_factory: sessionmaker[Session], make_tenant: Callable[..., Credentials]
) -> None:
    """Given tenant A's finished job whose deletion is running (its store delete held), when A sends 10 more
    DELETEs of it, then each answers 202 at once; once the first finishes it answers 204, the job's prefix
    was listed once and its objects deleted by one call, and the rows are gone."""
    a = make_tenant(requests_per_minute=100_000)
    with httpx.Client(base_url=url, timeout=HTTP_TIMEOUT_SECONDS) as http:
        job = finished_job(http, a, store, pg_factory)
    store.gated.add(job_prefix(a.tenant_id, job))

    with ThreadPoolExecutor(12) as pool, httpx.Client(base_url=url, timeout=HTTP_TIMEOUT_SECONDS) as http:
        first = pool.submit(_timed, http, "DELETE", f"/v1/jobs/{job}", a)
        wait_for(lambda: store.waiting == 1, timeout=10, what="the first deletion to reach the store")
        again = [pool.submit(_timed, http, "DELETE", f"/v1/jobs/{job}", a) for _ in range(10)]
        answers = [future.result() for future in again]
        store.release()
        assert first.result()[0] == 204

    assert [status for status, _, _ in answers] == [202] * 10, answers
    assert max(seconds for _, _, seconds in answers) < AT_ONCE_SECONDS, answers
    assert store.listings == [job_prefix(a.tenant_id, job)] and store.delete_calls == 1
    assert rows_of(pg_factory, job) == 0


def test_one_tenants_deletions_are_capped_and_do_not_starve_another_tenant(
    url: str, store: GatedStore, pg_factory: sessionmaker[Session], make_tenant: Callable[..., Credentials]
) -> None:
    """Given tenant A's deletions of 2 finished jobs running (their store deletes held), when A sends 40
    DELETEs of a third job, then each is a 429 with Retry-After at once and the third job is untouched; and
    meanwhile tenant B's GET /v1/jobs and the DELETE of its own job answer at once."""
    a = make_tenant(requests_per_minute=100_000)
    b = make_tenant(requests_per_minute=100_000)
    with httpx.Client(base_url=url, timeout=HTTP_TIMEOUT_SECONDS) as http:
        held = [finished_job(http, a, store, pg_factory) for _ in range(DELETIONS_PER_TENANT)]
        third = finished_job(http, a, store, pg_factory)
        theirs = finished_job(http, b, store, pg_factory, JobStatus.FAILED)
    store.gated.add(f"{a.tenant_id}/")

    with ThreadPoolExecutor(48) as pool, httpx.Client(base_url=url, timeout=HTTP_TIMEOUT_SECONDS) as http:
        running = [pool.submit(_timed, http, "DELETE", f"/v1/jobs/{job}", a) for job in held]
        wait_for(
            lambda: store.waiting == DELETIONS_PER_TENANT, timeout=10, what="A's deletions to reach the store"
        )
        burst: list[Future[tuple[int, str | None, float]]] = [
            pool.submit(_timed, http, "DELETE", f"/v1/jobs/{third}", a) for _ in range(40)
        ]
        time.sleep(0.5)  # the burst is in the server before B asks
        other_list = _timed(http, "GET", "/v1/jobs", b)
        other_delete = _timed(http, "DELETE", f"/v1/jobs/{theirs}", b)
        refused = [future.result() for future in burst]
        store.release()
        assert [future.result()[0] for future in running] == [204] * DELETIONS_PER_TENANT

    assert [status for status, _, _ in refused] == [429] * 40, refused
    assert {retry_after for _, retry_after, _ in refused} == {str(DELETION_RETRY_AFTER_SECONDS)}
    assert max(seconds for _, _, seconds in refused) < AT_ONCE_SECONDS, refused
    assert other_list[0] == 200 and other_list[2] < AT_ONCE_SECONDS, other_list
    assert other_delete[0] == 204 and other_delete[2] < AT_ONCE_SECONDS, other_delete
    assert rows_of(pg_factory, third) > 0 and len(list(store.list(job_prefix(a.tenant_id, third)))) == 2


def test_a_deletion_sends_one_bulk_delete_per_thousand_objects(
    pg_factory: sessionmaker[Session], make_tenant: Callable[..., Credentials], model_version: Any
) -> None:
    """Given a finished job with 1,500 objects, when it is deleted twice, then the first deletion removes
    1,000 objects with one bulk call and answers `finished=False`, the second removes the other 500 with one
    more and the rows; no object is deleted one request at a time."""
    store = CountingStore()
    a = make_tenant()
    job_id = _finished_job_rows(pg_factory, a.tenant_id)
    prefix = job_prefix(a.tenant_id, job_id)
    for index in range(1500):
        store.put(f"{prefix}a/{index:08d}.png", b"png")

    first = delete_job(pg_factory, store, job_id, tenant_id=a.tenant_id)
    second = delete_job(pg_factory, store, job_id, tenant_id=a.tenant_id)

    assert (first.objects_deleted, first.finished) == (DELETE_REQUEST_MAX_OBJECTS, False)
    assert (second.objects_deleted, second.finished) == (500, True)
    assert store.bulk_sizes == [DELETE_REQUEST_MAX_OBJECTS, 500] and store.single_deletes == 0
    assert list(store.list(prefix)) == [] and rows_of(pg_factory, job_id) == 0


class CountingStore(MemoryStore):
    """A MemoryStore that notes the size of each bulk delete and counts single deletes."""

    def __init__(self) -> None:
        super().__init__()
        self.bulk_sizes: list[int] = []
        self.single_deletes = 0

    def delete(self, key: str) -> None:
        self.single_deletes += 1
        super().delete(key)

    def delete_many(self, keys: Sequence[str]) -> None:
        self.bulk_sizes.append(len(keys))
        super().delete_many(keys)


def _finished_job_rows(factory: sessionmaker[Session], tenant_id: str) -> str:
    """A succeeded job of `tenant_id` planned through the one submit path (nothing published)."""
    spec = parse_job_spec({"items": [{"category": "a", "count": 2}], "seed": 1})
    planned = submit_job(factory, spec, tenant_id=tenant_id, publisher=lambda queue, ids: None)
    with transaction(factory) as session:
        session.execute(update(Job).where(Job.id == planned.job_id).values(status=JobStatus.SUCCEEDED))
    return planned.job_id
