"""Presigned URLs are signed for CATALOGAN_STORAGE_PUBLIC_ENDPOINT_URL, the S3 address users reach, when it is
set (compose: services talk to http://minio:9000, browsers to http://localhost:9000)."""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx
import pytest

from db.settings import StorageSettings
from db.storage import presign
from db.storage.base import ObjectStore


@pytest.fixture
def fresh_presign_settings() -> Iterator[None]:
    """The presign module's once-per-process caches, emptied before and after the test."""
    presign.public_endpoint_url.cache_clear()
    presign._public_client.cache_clear()
    yield
    presign.public_endpoint_url.cache_clear()
    presign._public_client.cache_clear()


@pytest.mark.integration
def test_presigned_urls_point_at_the_public_endpoint_and_verify_there(
    s3_store: ObjectStore, monkeypatch: pytest.MonkeyPatch, fresh_presign_settings: None
) -> None:
    """Given an object on the S3 server and a public endpoint naming the same server by another host name, when
    the object is presigned, then the URL names the public host and a plain GET there returns the bytes."""
    s3_store.put("a/b.png", b"public bytes")
    internal = urlsplit(s3_store.presign("a/b.png", expires_in_seconds=60).url)
    assert internal.hostname == "127.0.0.1"
    public = f"http://localhost:{internal.port}"
    monkeypatch.setenv("CATALOGAN_STORAGE_PUBLIC_ENDPOINT_URL", public)
    presign.public_endpoint_url.cache_clear()

    url = s3_store.presign("a/b.png", expires_in_seconds=60).url

    assert url.startswith(public + "/")
    response = httpx.get(url)
    assert response.status_code == 200 and response.content == b"public bytes"


def test_the_public_endpoint_must_be_an_http_url() -> None:
    """Given a public endpoint without a scheme, when the settings load, then they refuse it by name."""
    with pytest.raises(ValueError, match="CATALOGAN_STORAGE_PUBLIC_ENDPOINT_URL: must be an http"):
        StorageSettings(storage_public_endpoint_url="minio:9000")
