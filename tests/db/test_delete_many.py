"""`ObjectStore.delete_many`: bulk deletes on every backend, and on S3 one DeleteObjects request per 1,000 keys
(SeaweedFS), with the boto3 client alone and with obstore carrying PUTs."""

from __future__ import annotations

import uuid
from collections import Counter
from typing import Any

import pytest

from db.errors import InvalidKeyError, StorageError, TransientStorageError
from db.storage import ObjectStore, open_store
from db.storage.s3 import S3_DELETE_MAX_KEYS, S3Store
from tests.services import TEST_BUCKET


class CountingClient:
    """A boto3 S3 client that counts the operations called through it."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.calls: Counter[str] = Counter()

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self.inner, name)
        if not callable(attribute) or name.startswith("_") or name in {"get_paginator", "meta"}:
            return attribute

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] += 1
            return attribute(*args, **kwargs)

        return counted


def test_delete_many_removes_the_keys_and_only_them(object_store: ObjectStore) -> None:
    """Given objects inside and outside a list of keys (some of which name no object), when the list is deleted,
    then its objects are gone, the others stay, and deleting the list again is not an error."""
    doomed = [f"t/jobs/1/a/{index:08d}.png" for index in range(5)]
    kept = ["t/jobs/1/manifest.jsonl", "t/jobs/2/a/00000000.png"]
    for key in doomed + kept:
        object_store.put(key, key.encode())

    object_store.delete_many([*doomed, "t/jobs/1/a/never-written.png"])
    object_store.delete_many(doomed)

    assert [info.key for info in object_store.list("t/")] == sorted(kept)


def test_delete_many_checks_every_key_before_deleting_any(object_store: ObjectStore) -> None:
    """Given a list whose last key is invalid, when it is deleted, then InvalidKeyError and nothing is gone."""
    object_store.put("t/a", b"1")

    with pytest.raises(InvalidKeyError):
        object_store.delete_many(["t/a", "t/../escape"])

    assert object_store.exists("t/a")


@pytest.mark.parametrize("put_client", ["obstore", "boto3"])
def test_s3_deletes_1000_keys_per_request(
    s3_store: ObjectStore, put_client: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Given an S3 store (obstore carrying PUTs, or boto3 alone) and 7 objects among 2,050 keys, when the
    keys are deleted, then 3 DeleteObjects requests went out and no single-object DELETE, and the 7 are gone."""
    monkeypatch.setenv("CATALOGAN_S3_PUT_CLIENT", put_client)
    store = open_store(f"s3://{TEST_BUCKET}/t-{uuid.uuid4().hex[:12]}")
    assert isinstance(store, S3Store) and (store._fast is not None) == (put_client == "obstore")
    keys = [f"t/jobs/j/a/{index:08d}.png" for index in range(2 * S3_DELETE_MAX_KEYS + 50)]
    for key in keys[::300]:
        store.put(key, b"png")
    client = CountingClient(store.client)
    store.client = client

    store.delete_many(keys)

    assert client.calls["delete_objects"] == 3 and client.calls["delete_object"] == 0, client.calls
    assert list(store.list("t/")) == []


class RefusingClient:
    """Answers DeleteObjects as S3 does when it could not delete some keys (HTTP 200, an `Errors` list)."""

    def __init__(self, codes: list[str]) -> None:
        self.codes = codes

    def delete_objects(self, *, Bucket: str, Delete: dict[str, Any]) -> dict[str, Any]:
        objects = Delete["Objects"]
        return {
            "Errors": [
                {"Key": objects[index]["Key"], "Code": code, "Message": "no"}
                for index, code in enumerate(self.codes)
            ]
        }


@pytest.mark.parametrize(
    ("codes", "expected"),
    [
        (["SlowDown", "InternalError"], TransientStorageError),
        (["AccessDenied"], StorageError),
        (["SlowDown", "AccessDenied"], StorageError),
    ],
)
def test_s3_keys_it_could_not_delete_are_errors_of_their_codes(
    codes: list[str], expected: type[StorageError]
) -> None:
    """Given an S3 answer naming keys it did not delete, then delete_many raises: transient only when every
    failure is, and the message names a key inside the store, not the bucket's full key."""
    store = S3Store("s3://bucket/prefix", client=RefusingClient(codes))

    with pytest.raises(StorageError) as raised:
        store.delete_many(["t/a", "t/b"])

    assert type(raised.value) is expected
    assert "'t/a'" in str(raised.value) and codes[0] in str(raised.value)
