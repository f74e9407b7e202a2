"""`ObjectStore.put_file`: an object written from a file, a piece at a time, on every backend (S3 on SeaweedFS).

A job's manifests are uploaded this way (`workers.finalize`), so that no job's size sets a worker's memory."""

from __future__ import annotations

import io
import os
import tempfile
from typing import Any

import pytest

from db.errors import TransientStorageError
from db.storage import ObjectStore
from db.storage.s3 import S3Store

PIECE = 5 << 20  # S3's smallest part (all but the last)


def _payload(size: int) -> bytes:
    return os.urandom(4096) * (size // 4096) + os.urandom(size % 4096)


def test_put_file_stores_the_file_from_its_start(object_store: ObjectStore) -> None:
    """Given a file read to its end, put_file stores all of it (it rewinds), replacing an earlier object."""
    object_store.put("m/manifest.jsonl", b"old")
    payload = _payload(70_000)
    with tempfile.TemporaryFile() as file:
        file.write(payload)  # the position is now at the end

        object_store.put_file("m/manifest.jsonl", file, content_type="application/x-ndjson")

    assert object_store.get("m/manifest.jsonl") == payload


def test_put_file_of_an_empty_file_stores_an_empty_object(object_store: ObjectStore) -> None:
    object_store.put_file("m/empty", io.BytesIO())

    assert object_store.get("m/empty") == b""


def test_local_put_file_copies_a_piece_at_a_time_and_leaves_no_temp_file(
    local_store: ObjectStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Given a file of three pieces, the local store reads it a piece at a time (never whole) into place."""
    monkeypatch.setattr("db.storage.local.PUT_FILE_PIECE_BYTES", 1000)
    reads: list[int] = []

    class Watched(io.BytesIO):
        def read(self, size: int | None = -1, /) -> bytes:
            reads.append(-1 if size is None else size)
            return super().read(size)

    local_store.put_file("m/p", Watched(b"x" * 2500))

    assert local_store.get("m/p") == b"x" * 2500
    assert reads and all(0 < size <= 1000 for size in reads)
    assert [info.key for info in local_store.list("m/")] == ["m/p"]


@pytest.mark.integration
def test_s3_put_file_above_one_piece_is_a_multipart_upload_of_piece_sized_parts(
    s3_store: ObjectStore,
) -> None:
    """Given a file of two and a bit pieces, S3 gets three parts (each read alone) and the object is whole."""
    assert isinstance(s3_store, S3Store)
    s3_store.piece_bytes = PIECE
    calls: list[tuple[str, int]] = []
    client = s3_store.client
    original_part = client.upload_part
    original_put = client.put_object

    def upload_part(**kwargs: Any) -> Any:
        calls.append(("part", len(kwargs["Body"])))
        return original_part(**kwargs)

    def put_object(**kwargs: Any) -> Any:
        calls.append(("put", len(kwargs["Body"])))
        return original_put(**kwargs)

    client.upload_part = upload_part
    client.put_object = put_object
    s3_store._fast = None  # count the single PUTs too (the fast path would carry them)
    payload = _payload(2 * PIECE + 12_345)

    s3_store.put_file(
        "m/manifest.parquet", io.BytesIO(payload), content_type="application/vnd.apache.parquet"
    )
    s3_store.put_file("m/small", io.BytesIO(b"small"))

    assert s3_store.get("m/manifest.parquet") == payload
    assert s3_store.get("m/small") == b"small"
    assert calls == [("part", PIECE), ("part", PIECE), ("part", 12_345), ("put", 5)]
    head = client.head_object(Bucket=s3_store.bucket, Key=s3_store._full("m/manifest.parquet"))
    assert head["ContentType"] == "application/vnd.apache.parquet"


@pytest.mark.integration
def test_s3_put_file_that_fails_midway_leaves_no_object_and_no_open_upload(s3_store: ObjectStore) -> None:
    """Given a part that fails for good, put_file raises the storage error, writes no object and aborts the
    upload (no parts are left to be billed); an object already under the key stays as it was."""
    assert isinstance(s3_store, S3Store)
    s3_store.piece_bytes = PIECE
    s3_store.put("m/manifest.jsonl", b"earlier")
    client = s3_store.client
    original_part = client.upload_part

    def upload_part(**kwargs: Any) -> Any:
        if kwargs["PartNumber"] == 2:
            from botocore.exceptions import ClientError

            raise ClientError(
                {
                    "Error": {"Code": "SlowDown", "Message": "slow down"},
                    "ResponseMetadata": {"HTTPStatusCode": 503},
                },
                "UploadPart",
            )
        return original_part(**kwargs)

    client.upload_part = upload_part

    with pytest.raises(TransientStorageError, match=r"manifest\.jsonl \(part 2\): SlowDown"):
        s3_store.put_file("m/manifest.jsonl", io.BytesIO(_payload(2 * PIECE + 1)))

    assert s3_store.get("m/manifest.jsonl") == b"earlier"
    open_uploads = client.list_multipart_uploads(Bucket=s3_store.bucket, Prefix=s3_store._full("m") + "/")
    assert open_uploads.get("Uploads", []) == []
