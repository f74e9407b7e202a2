"""Manifests through the SDK without holding them: `iter_manifest_rows` parses the JSONL answer a line at a
time, `download_manifest` streams JSONL or Parquet to a file and renames it into place.

Rows and files: the real app on PostgreSQL with its in-memory store (FastAPI's TestClient transport under the
SDK). Memory and bounds: a peer on loopback (http.server in a thread) that streams what it sends as it
makes it, chunked, so only the SDK's reading decides what is held.
"""

from __future__ import annotations

import io
import json
import threading
import tracemalloc
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from db.engine import transaction
from db.images import manifest_keys
from db.status import JobStatus
from db.storage import ObjectStore
from db.tables import Job
from scheduler.client import MAX_MANIFEST_LINE_BYTES, Client
from scheduler.errors import ResponseTooLargeError, TransportError
from tests.scheduler.conftest import Credentials

MIB = 1 << 20
BIG_ROWS = 100_000


def manifest_row(index: int, tenant: str = "t", job: str = "j") -> dict[str, Any]:
    """A manifest row as the workers write it (about 330 bytes of JSON)."""
    return {
        "index": index,
        "sku": f"SKU-{index}",
        "category": "a",
        "key": f"{tenant}/jobs/{job}/SKU-{index}/{index:08d}.png",
        "sha256": f"{index:064x}",
        "seed": 7,
        "model_version": "tiny@1",
        "status": "succeeded",
        "error": None,
    }


@pytest.fixture
def finished_job(
    api: TestClient, tenant: Credentials, pg_factory: sessionmaker[Session], api_store: ObjectStore
) -> tuple[str, list[dict[str, Any]]]:
    """A finished job of tenant acme with a JSONL and a Parquet manifest of 2,000 rows in the API's store: its
    id and its rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    created = api.post("/v1/jobs", json={"items": [{"category": "a", "count": 1}]}, headers=tenant.headers)
    job_id = created.json()["id"]
    rows = [manifest_row(index, tenant.tenant_id, job_id) for index in range(2000)]
    jsonl_key, parquet_key = manifest_keys(tenant.tenant_id, job_id)
    api_store.put(jsonl_key, b"".join(json.dumps(row).encode() + b"\n" for row in rows))
    parquet = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), parquet)
    api_store.put(parquet_key, parquet.getvalue())
    with transaction(pg_factory) as session:
        session.execute(
            update(Job).where(Job.id == job_id).values(status=JobStatus.SUCCEEDED, manifest_key=jsonl_key)
        )
    return job_id, rows


def sdk(api: TestClient, tenant: Credentials) -> Client:
    """The SDK on the app."""
    return Client("http://testserver", tenant.api_key, transport=api._transport)


def test_manifest_rows_come_one_at_a_time_with_their_review(
    api: TestClient, tenant: Credentials, finished_job: tuple[str, list[dict[str, Any]]]
) -> None:
    """Given a finished job, when its manifest is iterated, then every row comes in index order with the API's
    review column, and `manifest_rows` still returns the same rows as a list."""
    job_id, rows = finished_job
    with sdk(api, tenant) as client:
        iterated = client.iter_manifest_rows(job_id)
        assert next(iterated) == {**rows[0], "review": "pending"}
        assert list(iterated) == [{**row, "review": "pending"} for row in rows[1:]]
        assert client.manifest_rows(job_id) == [{**row, "review": "pending"} for row in rows]


@pytest.mark.parametrize("format", ["jsonl", "parquet"])
def test_download_manifest_replaces_the_file_with_the_complete_manifest(
    api: TestClient,
    tenant: Credentials,
    finished_job: tuple[str, list[dict[str, Any]]],
    tmp_path: Path,
    format: str,
) -> None:
    """Given a finished job and an older file at the target, when its manifest is downloaded, then the file holds
    exactly what the API serves in that format and nothing temporary is left beside it."""
    job_id, _ = finished_job
    target = tmp_path / "out" / f"manifest.{format}"
    target.parent.mkdir()
    target.write_bytes(b"an older export")
    with sdk(api, tenant) as client:
        assert client.download_manifest(job_id, target, format=format) == target
        assert target.read_bytes() == client.get_manifest(job_id, format=format)
    assert [path.name for path in target.parent.iterdir()] == [target.name]


# --- memory and bounds, against a streaming peer ---------------------------------------------------------------


class StreamingPeer:
    """Answers `GET /v1/jobs/<name>/manifest` with a chunked body made as it is sent: `big` = BIG_ROWS rows,
    `long` = one line of 2 MiB, `cut` = 1,000 rows and then the connection closed mid-answer."""

    def __init__(self) -> None:
        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                name = self.path.split("/")[3]
                self.send_response(200)
                self.send_header("content-type", "application/x-ndjson")
                self.send_header("transfer-encoding", "chunked")
                self.end_headers()
                try:
                    for piece in StreamingPeer.pieces(name):
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                    if name == "cut":
                        self.close_connection = True
                        return
                    self.wfile.write(b"0\r\n\r\n")
                except OSError:  # the client hung up
                    pass

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @staticmethod
    def pieces(name: str) -> Iterator[bytes]:
        """The body of manifest `name`, in pieces of 200 rows (about 64 KiB)."""
        if name == "long":
            for _ in range(32):
                yield b"x" * (64 * 1024)
            return
        batch = b"".join(json.dumps(manifest_row(index)).encode() + b"\n" for index in range(200))
        for _ in range((BIG_ROWS if name == "big" else 1000) // 200):
            yield batch

    def stop(self) -> None:
        """Stop serving."""
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def streaming_peer() -> Iterator[StreamingPeer]:
    """The streaming peer, stopped after the test."""
    peer = StreamingPeer()
    yield peer
    peer.stop()


def test_iterating_100k_rows_holds_a_line_not_the_manifest(streaming_peer: StreamingPeer) -> None:
    """Given a manifest of 100,000 rows (about 33 MB), when its rows are iterated and counted, then all come
    and under 4 MiB was allocated at the peak (before: `manifest_rows`, the only way, held the body, its
    text and every row: 170 MB)."""
    tracemalloc.start()
    try:
        with Client(streaming_peer.url, "cg_k") as client:
            count = sum(1 for row in client.iter_manifest_rows("big") if row["status"] == "succeeded")
        peak = tracemalloc.get_traced_memory()[1] / MIB
    finally:
        tracemalloc.stop()
    assert count == BIG_ROWS
    assert peak < 4, f"{peak:.1f} MiB allocated iterating the manifest"


def test_a_line_longer_than_the_bound_is_refused(streaming_peer: StreamingPeer) -> None:
    """Given a manifest whose first line runs on for 2 MiB, when its rows are iterated, then
    ResponseTooLargeError names the line bound, with no more than about that bound held."""
    tracemalloc.start()
    try:
        with (
            Client(streaming_peer.url, "cg_k") as client,
            pytest.raises(ResponseTooLargeError, match=f"line over {MAX_MANIFEST_LINE_BYTES}"),
        ):
            list(client.iter_manifest_rows("long"))
        peak = tracemalloc.get_traced_memory()[1] / MIB
    finally:
        tracemalloc.stop()
    assert peak < 4 * MAX_MANIFEST_LINE_BYTES / MIB


def test_a_manifest_download_cut_off_leaves_the_old_file(
    streaming_peer: StreamingPeer, tmp_path: Path
) -> None:
    """Given a peer that drops the connection in the middle of the manifest, when it is downloaded over an
    older file, then TransportError, the older file is untouched and no partial file is left."""
    target = tmp_path / "manifest.jsonl"
    target.write_bytes(b"an older export")
    with Client(streaming_peer.url, "cg_k") as client, pytest.raises(TransportError):
        client.download_manifest("cut", target)
    assert target.read_bytes() == b"an older export"
    assert [path.name for path in tmp_path.iterdir()] == ["manifest.jsonl"]


def test_a_bounded_manifest_download_is_refused_past_its_cap(
    streaming_peer: StreamingPeer, tmp_path: Path
) -> None:
    """Given `max_manifest_bytes` of 1 MiB and a manifest of 33 MB, when it is downloaded, then
    ResponseTooLargeError and no file is written."""
    target = tmp_path / "manifest.jsonl"
    with (
        Client(streaming_peer.url, "cg_k", max_manifest_bytes=MIB) as client,
        pytest.raises(ResponseTooLargeError),
    ):
        client.download_manifest("big", target)
    assert list(tmp_path.iterdir()) == []
