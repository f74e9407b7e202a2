"""The S3 store's hot-path PUT through obstore: same objects as boto3 would write, errors as project errors."""

from __future__ import annotations

import pytest

from db.errors import ObjectNotFoundError, StorageError, TransientStorageError
from db.storage import open_store
from db.storage.s3 import S3Store
from tests.services import TEST_BUCKET


def test_obstore_put_stores_the_bytes_and_content_type_boto3_reads_back(s3_store: S3Store) -> None:
    # Given the S3 store of the tests (no injected client: PUTs go through obstore)
    assert s3_store._fast_put is not None
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
    assert isinstance(store, S3Store) and store._fast_put is None
    store.put("k", b"via boto3")
    assert store.get("k") == b"via boto3"


def test_an_unknown_put_client_is_refused_naming_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given CATALOGAN_S3_PUT_CLIENT=crt, when the store is opened, then one clear error naming the setting
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("CATALOGAN_S3_PUT_CLIENT", "crt")
    with pytest.raises(StorageError, match=r"CATALOGAN_S3_PUT_CLIENT='crt': must be one of obstore, boto3"):
        open_store("s3://bucket/prefix")
