"""The S3 store's hot-path PUT through obstore: same objects as boto3 would write, errors as project errors."""

from __future__ import annotations

import pytest

from db.errors import ObjectNotFoundError, StorageError, TransientStorageError
from db.storage import open_store
from db.storage.s3 import S3Store
from tests.services import TEST_BUCKET


def test_obstore_put_stores_the_bytes_and_content_type_boto3_reads_back(s3_store: S3Store) -> None:
    # Given the S3 store of the tests (no injected client: PUTs go through obstore)
    assert s3_store._fast is not None
    # When an image is put
    s3_store.put("t/jobs/1/a/00000000.png", b"\x89PNG bytes", content_type="image/png")
    # Then boto3 reads the same bytes with the content type a browser needs, and presigning still works
    head = s3_store.client.head_object(
        Bucket=s3_store.bucket, Key=f"{s3_store.prefix}/t/jobs/1/a/00000000.png"
    )
    assert head["ContentType"] == "image/png"
    assert s3_store.get("t/jobs/1/a/00000000.png") == b"\x89PNG bytes"
    assert "X-Amz-Signature=" in s3_store.presign("t/jobs/1/a/00000000.png", expires_in_seconds=60).url


def test_put_into_a_missing_bucket_is_a_permanent_storage_error(
    s3_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a store on a bucket that does not exist
    for name, value in s3_env.items():
        monkeypatch.setenv(name, value)
    store = open_store("s3://no-such-bucket-catalogan/p")
    # When a put is tried, then a StorageError naming the object and the S3 error (SeaweedFS answers 403
    # AccessDenied for a missing bucket), neither retryable nor not-found
    with pytest.raises(
        StorageError, match="put s3://no-such-bucket-catalogan/p/k: 403 AccessDenied"
    ) as caught:
        store.put("k", b"x")
    assert not isinstance(caught.value, (TransientStorageError, ObjectNotFoundError))
    assert caught.value.__cause__ is not None


def test_the_boto3_put_client_can_be_chosen(s3_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    # Given CATALOGAN_S3_PUT_CLIENT=boto3
    for name, value in s3_env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("CATALOGAN_S3_PUT_CLIENT", "boto3")
    store = open_store(f"s3://{TEST_BUCKET}/put-client-choice")
    # Then PUTs go through boto3 and still land
    assert isinstance(store, S3Store) and store._fast is None
    store.put("k", b"via boto3")
    assert store.get("k") == b"via boto3"


def test_an_unknown_put_client_is_refused_naming_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given CATALOGAN_S3_PUT_CLIENT=crt, when the store is opened, then one clear error naming the setting
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("CATALOGAN_S3_PUT_CLIENT", "crt")
    with pytest.raises(StorageError, match=r"CATALOGAN_S3_PUT_CLIENT='crt': must be one of obstore, boto3"):
        open_store("s3://bucket/prefix")


@pytest.mark.parametrize("client", ["obstore", "boto3"])
def test_get_many_reads_every_object_in_order_and_names_a_missing_one(
    s3_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, client: str
) -> None:
    # Given 30 objects in SeaweedFS, and a store whose bulk reads go through `client`
    for name, value in s3_env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("CATALOGAN_S3_PUT_CLIENT", client)
    store = open_store(f"s3://{TEST_BUCKET}/get-many-{client}")
    assert isinstance(store, S3Store) and (store._fast is not None) == (client == "obstore")
    keys = [f"j/a/{index:08d}.png" for index in range(30)]
    for index, key in enumerate(keys):
        store.put(key, f"image {index}".encode())
    # When they are read 8 at a time, then each comes back with its own bytes, in the order asked
    assert list(store.get_many(keys, in_flight=8)) == [(k, f"image {i}".encode()) for i, k in enumerate(keys)]
    # And a missing key among them is ObjectNotFoundError naming it, after the objects before it
    read: list[str] = []
    with pytest.raises(ObjectNotFoundError, match=r"get s3://.*/get-many-.*/j/a/missing\.png"):
        for key, _ in store.get_many([*keys[:3], "j/a/missing.png", keys[3]], in_flight=8):
            read.append(key)
    assert read == keys[:3]
