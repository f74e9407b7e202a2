"""The object-store contract, run against every backend: memory, a local folder and S3 (SeaweedFS)."""

from __future__ import annotations

import datetime as dt
import threading
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from db.errors import InvalidKeyError, ObjectNotFoundError, StorageError
from db.storage import LocalStore, MemoryStore, ObjectInfo, ObjectStore, open_store
from db.storage.s3 import S3Store
from tests.services import TEST_BUCKET

BAD_KEYS = ["", "/abs", "a//b", "a/", "../x", "a/../b", "a/./b", "a\\b", "a\x00b", "a\nb"]


def test_put_then_get_returns_the_same_bytes(object_store: ObjectStore) -> None:
    """Given an empty store, when bytes are put under a key, then get returns them and exists is true."""
    payload = bytes(range(256)) * 4
    object_store.put("tenant/jobs/j1/Sneaker/00000001.png", payload, content_type="image/png")

    assert object_store.get("tenant/jobs/j1/Sneaker/00000001.png") == payload
    assert object_store.exists("tenant/jobs/j1/Sneaker/00000001.png")


def test_put_replaces_an_existing_object(object_store: ObjectStore) -> None:
    """Given an object, when another put writes the same key, then get returns the new bytes."""
    object_store.put("a/b.txt", b"old")
    object_store.put("a/b.txt", b"new contents")

    assert object_store.get("a/b.txt") == b"new contents"


def test_get_of_a_missing_key_raises_object_not_found(object_store: ObjectStore) -> None:
    """Given no object at a key, get raises ObjectNotFoundError naming the key, and exists is false."""
    with pytest.raises(ObjectNotFoundError, match="missing/key"):
        object_store.get("missing/key")
    assert not object_store.exists("missing/key")


def test_delete_removes_the_object_and_is_idempotent(object_store: ObjectStore) -> None:
    """Given an object, when it is deleted (twice), then it is gone and the second delete does not fail."""
    object_store.put("x/y", b"1")
    object_store.delete("x/y")
    object_store.delete("x/y")

    assert not object_store.exists("x/y")
    with pytest.raises(ObjectNotFoundError):
        object_store.get("x/y")


def test_list_yields_objects_under_a_prefix_in_key_order(object_store: ObjectStore) -> None:
    """Given objects under several prefixes, list(prefix) yields exactly those under it, sorted, with sizes."""
    for key in ["t/jobs/2/b", "t/jobs/1/a", "t/jobs/10/c", "t/other", "u/jobs/1/a"]:
        object_store.put(key, key.encode())

    listed = list(object_store.list("t/jobs/"))

    assert listed == [
        ObjectInfo("t/jobs/1/a", len(b"t/jobs/1/a")),
        ObjectInfo("t/jobs/10/c", len(b"t/jobs/10/c")),
        ObjectInfo("t/jobs/2/b", len(b"t/jobs/2/b")),
    ]
    assert [info.key for info in object_store.list("t/jobs/1")] == ["t/jobs/1/a", "t/jobs/10/c"]
    assert len(list(object_store.list())) == 5
    assert list(object_store.list("nothing/")) == []


def test_empty_object_round_trips(object_store: ObjectStore) -> None:
    """Given zero bytes, put/get/list treat it as an object of size 0."""
    object_store.put("empty", b"")

    assert object_store.get("empty") == b""
    assert list(object_store.list("empty")) == [ObjectInfo("empty", 0)]


def test_unicode_keys_round_trip(object_store: ObjectStore) -> None:
    """Given a key with non-ASCII text and spaces, put/get/list use it unchanged."""
    key = "tenant/Ankle boot/Größe 42 – 北京.png"
    object_store.put(key, b"img")

    assert object_store.get(key) == b"img"
    assert [info.key for info in object_store.list("tenant/")] == [key]


@pytest.mark.parametrize("key", BAD_KEYS)
def test_every_operation_rejects_an_invalid_key(object_store: ObjectStore, key: str) -> None:
    """Given a key that breaks a rule, every operation raises InvalidKeyError and nothing is written."""
    for operation in (
        lambda: object_store.put(key, b"x"),
        lambda: object_store.get(key),
        lambda: object_store.exists(key),
        lambda: object_store.delete(key),
        lambda: object_store.presign(key, expires_in_seconds=60),
    ):
        with pytest.raises(InvalidKeyError, match="key"):
            operation()
    assert list(object_store.list()) == []


def test_presign_gives_an_expiry_in_the_future(object_store: ObjectStore) -> None:
    """Given an object, presign returns a URL and an expiry about `expires_in_seconds` from now."""
    object_store.put("p/q.png", b"png")
    before = dt.datetime.now(dt.UTC)

    presigned = object_store.presign("p/q.png", expires_in_seconds=600)

    assert presigned.url
    assert before + dt.timedelta(seconds=590) <= presigned.expires_at <= before + dt.timedelta(seconds=601)


@pytest.mark.parametrize("seconds", [0, -1, 7 * 24 * 3600 + 1])
def test_presign_rejects_an_expiry_out_of_range(object_store: ObjectStore, seconds: int) -> None:
    """Given an expiry of zero, negative or past seven days, presign raises ValueError."""
    with pytest.raises(ValueError, match="expires_in_seconds"):
        object_store.presign("k", expires_in_seconds=seconds)


def test_uri_names_the_object_inside_the_store(object_store: ObjectStore) -> None:
    """Given a store, uri(key) is the store URL followed by the key."""
    assert object_store.uri("a/b.png") == object_store.url.rstrip("/") + "/a/b.png"


def test_concurrent_puts_of_one_key_leave_one_whole_object(object_store: ObjectStore) -> None:
    """Given 8 threads writing different payloads to one key, the final object is one of them, untorn."""
    payloads = [bytes([n]) * 200_000 for n in range(8)]
    threads = [threading.Thread(target=object_store.put, args=("race/key", p)) for p in payloads]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert object_store.get("race/key") in payloads
    assert [info.key for info in object_store.list("race/")] == ["race/key"]


# --- backend specifics -----------------------------------------------------------------------------------


def test_s3_presigned_url_downloads_the_object(s3_store: ObjectStore) -> None:
    """Given an object on S3, a plain HTTP GET of its presigned URL returns the bytes."""
    s3_store.put("dl/image.png", b"\x89PNG fake", content_type="image/png")

    presigned = s3_store.presign("dl/image.png", expires_in_seconds=120)
    response = httpx.get(presigned.url, timeout=10)

    assert response.status_code == 200
    assert response.content == b"\x89PNG fake"
    assert "X-Amz-Expires=120" in presigned.url


def test_s3_missing_bucket_is_a_storage_error_not_not_found(
    s3_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Given a bucket that does not exist, get raises StorageError that is not ObjectNotFoundError."""
    for name, value in s3_env.items():
        monkeypatch.setenv(name, value)
    store = open_store("s3://no-such-bucket-catalogan/p")

    with pytest.raises(StorageError, match="NoSuchBucket") as caught:
        store.get("k")
    assert not isinstance(caught.value, ObjectNotFoundError)
    assert caught.value.__cause__ is not None


def test_s3_unreachable_endpoint_is_transient(monkeypatch: pytest.MonkeyPatch) -> None:
    """Given an endpoint nothing listens on, a put raises TransientStorageError (worth retrying)."""
    from db.errors import TransientStorageError
    from tests.services import free_port

    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    store = open_store("s3://bucket/prefix")

    with pytest.raises(TransientStorageError, match="put s3://bucket/prefix/k"):
        store.put("k", b"x")


@pytest.mark.integration
def test_s3_region_comes_from_aws_region_the_variable_compose_and_the_docs_set(
    s3_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """botocore reads only AWS_DEFAULT_REGION; AWS_REGION, which the docs and compose set, must not be ignored
    (a bucket outside us-east-1 would get URLs signed for the wrong region)."""
    for name, value in s3_env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    # Given AWS_REGION, also beside a different AWS_DEFAULT_REGION (AWS_REGION wins, as in the AWS CLI v2)
    for default_region in (None, "ap-south-1"):
        if default_region:
            monkeypatch.setenv("AWS_DEFAULT_REGION", default_region)
        else:
            monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
        monkeypatch.setenv("AWS_REGION", "eu-west-3")
        store = open_store(f"s3://{TEST_BUCKET}/region-{default_region}")
        assert isinstance(store, S3Store)
        # Then the client, the fast PUT path and the presigned URLs use it, and the server accepts all three
        assert store.client.meta.region_name == "eu-west-3"
        store.put("r.png", b"regional")
        assert store.get("r.png") == b"regional"
        url = store.presign("r.png", expires_in_seconds=60).url
        assert "%2Feu-west-3%2Fs3%2Faws4_request" in url
        assert httpx.get(url).content == b"regional"
    # And without AWS_REGION botocore's own chain decides (AWS_DEFAULT_REGION here)
    monkeypatch.delenv("AWS_REGION")
    assert open_store("s3://any-bucket/x").client.meta.region_name == "ap-south-1"  # type: ignore[attr-defined]


def test_local_store_writes_files_under_its_folder_and_leaves_no_temp_files(local_store: LocalStore) -> None:
    """Given a local store, put creates the file at root/key (readable by others) and no temp files remain."""
    local_store.put("t/jobs/1/Shirt/00000000.png", b"png")

    path = local_store.root / "t/jobs/1/Shirt/00000000.png"
    assert path.read_bytes() == b"png"
    assert path.stat().st_mode & 0o044 == 0o044
    assert sorted(p.name for p in path.parent.iterdir()) == ["00000000.png"]


def test_local_presigned_url_is_a_file_uri_of_the_object(local_store: LocalStore) -> None:
    """Given a local object, its presigned URL is a file:// URI whose path holds the bytes."""
    local_store.put("a/b c.png", b"data")

    url = local_store.presign("a/b c.png", expires_in_seconds=60).url

    assert url.startswith("file:///")
    assert Path(urlsplit(url).path.replace("%20", " ")).read_bytes() == b"data"


def test_local_store_refuses_a_key_below_an_existing_object(local_store: LocalStore) -> None:
    """Given an object `a`, a put to `a/b` raises StorageError (a folder cannot be a file too)."""
    local_store.put("a", b"1")

    with pytest.raises(StorageError, match="a/b"):
        local_store.put("a/b", b"2")
    assert local_store.get("a") == b"1"


def test_open_store_picks_the_backend_from_the_url(tmp_path: Path) -> None:
    """Given each URL scheme, open_store returns the matching backend; an unknown scheme is refused."""
    assert isinstance(open_store("memory://"), MemoryStore)
    local = open_store(tmp_path.as_uri())
    assert isinstance(local, LocalStore)
    assert local.root == tmp_path
    with pytest.raises(StorageError, match="unsupported object-store URL"):
        open_store("ftp://host/x")
    with pytest.raises(StorageError, match="file:///absolute/path"):
        open_store("file://relative/path")


def test_open_store_parses_s3_bucket_and_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    """Given s3://bucket/some/prefix/, the store keeps bucket and prefix and builds URIs under them."""
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    store = open_store("s3://my-bucket/some/prefix/")

    assert store.url == "s3://my-bucket/some/prefix"
    assert store.uri("k.png") == "s3://my-bucket/some/prefix/k.png"
    with pytest.raises(InvalidKeyError):
        open_store("s3://my-bucket/a/../b")


@pytest.mark.parametrize(
    ("code", "status", "expected"),
    [
        ("NoSuchKey", 404, "ObjectNotFoundError"),
        ("404", 404, "ObjectNotFoundError"),  # HEAD has no body, botocore reports the status as the code
        ("SlowDown", 503, "TransientStorageError"),
        ("Throttling", 400, "TransientStorageError"),
        ("InternalError", 500, "TransientStorageError"),
        ("", 502, "TransientStorageError"),
        ("TooManyRequests", 429, "TransientStorageError"),
        ("AccessDenied", 403, "StorageError"),
        ("NoSuchBucket", 404, "StorageError"),
    ],
)
def test_s3_client_errors_map_to_project_errors(code: str, status: int, expected: str) -> None:
    """Given an S3 error response, translate_error picks the project error a caller can act on:
    not found, retry later, or a permanent failure."""
    from botocore.exceptions import ClientError

    from db.storage.s3 import translate_error

    response = {"Error": {"Code": code, "Message": "msg"}, "ResponseMetadata": {"HTTPStatusCode": status}}
    error = translate_error(ClientError(response, "GetObject"), "get s3://b/k")

    assert type(error).__name__ == expected
    assert str(error).startswith("get s3://b/k: ")


def test_iter_chunks_returns_the_bytes_in_bounded_pieces(object_store: ObjectStore) -> None:
    """Given a 2.5 MB object, when read with iter_chunks of 1 MiB, then the pieces join to the object, none is
    larger than asked, and a missing key is ObjectNotFoundError."""
    data = bytes(range(256)) * 10_000
    object_store.put("t/jobs/j/manifest.jsonl", data)
    pieces = list(object_store.iter_chunks("t/jobs/j/manifest.jsonl", 1 << 20))
    assert b"".join(pieces) == data and len(pieces) >= 3 and max(map(len, pieces)) <= 1 << 20
    with pytest.raises(ObjectNotFoundError):
        list(object_store.iter_chunks("t/jobs/j/missing"))
