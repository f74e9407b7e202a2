"""Image listings and manifest downloads hold no more than their work needs (outside audit, resource holding):
a listing presigns after its session is closed, a tenant has at most two manifest downloads at once (API and
console together; one more is a 429 with `Retry-After`), and a Parquet download gives back its spooled copy of
the stored manifest before it sends. PostgreSQL and SeaweedFS, uvicorn on loopback for the downloads."""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from db.images import manifest_keys
from db.storage import ObjectStore
from scheduler.api.routes.images import MANIFEST_CHUNK_BYTES, reviewed_parquet
from scheduler.settings import ApiSettings, WebhookSettings
from tests.scheduler.conftest import Credentials, LiveServer, _app
from tests.scheduler.gated_store import GatedS3Store
from tests.scheduler.test_console import insert_finished_job, sign_in

pytestmark = pytest.mark.integration


@pytest.fixture
def api_store(s3_store: ObjectStore) -> GatedS3Store:
    """The API's store: SeaweedFS, counted and gated."""
    return GatedS3Store(s3_store.url)


def test_a_listing_presigns_its_urls_after_giving_back_its_database_connection(
    api: TestClient,
    tenant: Credentials,
    pg_factory: sessionmaker[Session],
    api_store: GatedS3Store,
    model_version: Any,
) -> None:
    """Given a finished job of 6 delivered images, when the tenant lists them (up to 1,000 URLs a page, a
    quarter of a second of CPU), then every URL is presigned while the request holds no pooled connection.
    Before: the request's session stayed open, idle in transaction on a pooled connection, through it all."""
    job = insert_finished_job(pg_factory, api_store, tenant.tenant_id, model_version)
    pool = pg_factory.kw["bind"].pool
    held_at_presign: list[int] = []
    api_store.on_presign = lambda: held_at_presign.append(pool.checkedout())

    response = api.get(f"/v1/jobs/{job.job_id}/images", params={"limit": 1000}, headers=tenant.headers)

    assert response.status_code == 200, response.text
    assert [image["url"] is not None for image in response.json()["data"]] == [True] * 6 + [False]
    assert held_at_presign == [0] * 6


def test_a_listings_cursor_and_filter_still_page_after_the_session_moved(
    api: TestClient,
    tenant: Credentials,
    make_tenant: Callable[..., Credentials],
    pg_factory: sessionmaker[Session],
    api_store: GatedS3Store,
    model_version: Any,
) -> None:
    """Given the same job, when it is listed 4 at a time, then the pages join up in index order; a forged
    cursor is a 422 naming `cursor`, and another tenant gets a 404 (pins the behaviour the move kept)."""
    job = insert_finished_job(pg_factory, api_store, tenant.tenant_id, model_version)
    first = api.get(f"/v1/jobs/{job.job_id}/images", params={"limit": 4}, headers=tenant.headers).json()
    second = api.get(
        f"/v1/jobs/{job.job_id}/images",
        params={"limit": 4, "cursor": first["next_cursor"]},
        headers=tenant.headers,
    ).json()
    assert [image["index"] for image in first["data"] + second["data"]] == list(range(7))
    assert second["next_cursor"] is None
    forged = api.get(f"/v1/jobs/{job.job_id}/images", params={"cursor": "x"}, headers=tenant.headers)
    assert forged.status_code == 422 and forged.json()["errors"][0]["field"] == "cursor"
    other = make_tenant("other")
    assert api.get(f"/v1/jobs/{job.job_id}/images", headers=other.headers).status_code == 404


def _large_jsonl_manifest(store: ObjectStore, tenant_id: str, job_id: str) -> int:
    """Replace the job's JSONL manifest by one of several `MANIFEST_CHUNK_BYTES` pieces; its row count."""
    jsonl_key, _ = manifest_keys(tenant_id, job_id)
    row = {"category": "a", "key": None, "sha256": None, "sku": "S", "status": "failed", "error": "x" * 300}
    rows = 3 * MANIFEST_CHUNK_BYTES // 350
    store.put(jsonl_key, b"".join(json.dumps({**row, "index": i}).encode() + b"\n" for i in range(rows)))
    return rows


def test_a_tenant_has_at_most_two_manifest_downloads_at_once_across_the_api_and_the_console(
    pg_factory: sessionmaker[Session],
    api_store: GatedS3Store,
    published: list[Any],
    tmp_path: Path,
    model_version: Any,
    make_tenant: Callable[..., Credentials],
    live_server_factory: Callable[[Any], LiveServer],
) -> None:
    """Given a tenant whose two manifest downloads are in progress (their store reads held after the first
    piece), when it asks for a third, by the API or the console, then 429 with `Retry-After` at once, while
    another tenant downloads its own. Once the two clients go away, the tenant downloads again.
    Before: no bound; every download took a thread of the shared pool for each piece."""
    owner, other = make_tenant("owner"), make_tenant("other")
    job = insert_finished_job(pg_factory, api_store, owner.tenant_id, model_version)
    rows = _large_jsonl_manifest(api_store, owner.tenant_id, job.job_id)
    other_job = insert_finished_job(pg_factory, api_store, other.tenant_id, model_version)
    url = live_server_factory(
        _app(pg_factory, api_store, published, tmp_path, ApiSettings(), WebhookSettings())
    ).url
    api_store.hold(f"{owner.tenant_id}/")
    manifest = f"/v1/jobs/{job.job_id}/manifest"
    with (
        httpx.Client(base_url=url, timeout=30, headers=owner.headers) as client,
        httpx.Client(base_url=url, timeout=30) as browser,
        contextlib.ExitStack() as downloads,
    ):
        try:
            # Given two downloads started (their answers began) and held mid-way
            for _ in range(2):
                started = downloads.enter_context(client.stream("GET", manifest))
                assert started.status_code == 200
            # When a third is asked for, by the API or by the console
            third = downloads.enter_context(client.stream("GET", manifest))
            sign_in(browser, owner.api_key)  # type: ignore[arg-type]
            by_console = downloads.enter_context(
                browser.stream("GET", f"/console/jobs/{job.job_id}/manifest.csv")
            )
            # Then both are 429s with Retry-After, and another tenant's download is not held up
            for refused in (third, by_console):
                assert refused.status_code == 429, refused.status_code
                assert int(refused.headers["Retry-After"]) >= 1
            theirs = client.get(f"/v1/jobs/{other_job.job_id}/manifest", headers=other.headers)
            assert theirs.status_code == 200 and len(theirs.content.splitlines()) == 7
        finally:
            downloads.close()  # the two clients go away mid-download
            api_store.release()
        # And once the server has seen them go (their slots were given back), the tenant downloads again, whole
        again = _once_not_refused(lambda: client.get(manifest))
        assert again.status_code == 200 and len(again.content.splitlines()) == rows
        as_csv = _once_not_refused(lambda: browser.get(f"/console/jobs/{job.job_id}/manifest.csv"))
        assert as_csv.status_code == 200 and len(as_csv.content.splitlines()) == rows + 1


def _once_not_refused(download: Callable[[], httpx.Response], timeout_seconds: float = 20) -> httpx.Response:
    """`download()`'s first answer that is not a 429 (the server gives a download's slot back just after its
    last piece, or once it notices its client has gone), or the last 429 after `timeout_seconds`."""
    deadline = time.monotonic() + timeout_seconds
    while (response := download()).status_code == 429 and time.monotonic() < deadline:
        time.sleep(0.05)
    return response


def _open_temporary_files() -> set[str]:
    """This process's open descriptors of unlinked files in the temporary folder (`tempfile.TemporaryFile`)."""
    found = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/self/fd/{fd}")
            if target.startswith(tempfile.gettempdir()) and target.endswith("(deleted)"):
                found.add(target)
    return found


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="reads /proc/self/fd (Linux)")
def test_a_parquet_download_frees_its_copy_of_the_stored_manifest_before_it_sends() -> None:
    """Given a stored Parquet manifest, when its reviewed rewrite hands out its first piece to send, then only
    the rewritten file is still open: the spooled copy of the stored one (as large as the manifest) is gone.
    Before: both stayed open, on disk, until the last piece was sent (or the client went away)."""
    table = pa.table(
        {
            "index": pa.array(range(1000), pa.int64()),
            "status": pa.array(["succeeded"] * 1000),
            "key": pa.array([f"t/jobs/j/a/{i:08d}.png" for i in range(1000)]),
        }
    )
    stored = io.BytesIO()
    pq.write_table(table, stored)
    before = _open_temporary_files()

    pieces = reviewed_parquet(iter([stored.getvalue()]), {3: "approved"})
    first = next(pieces)
    open_while_sending = _open_temporary_files() - before
    rest = b"".join(pieces)

    assert len(open_while_sending) == 1, open_while_sending
    assert _open_temporary_files() - before == set()
    rewritten = pq.read_table(io.BytesIO(first + rest))
    assert rewritten.column("review").to_pylist()[2:5] == ["pending", "approved", "pending"]
