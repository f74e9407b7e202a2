"""`POST /v1/previews`: bounded to 8 images, and a clear 503 when no worker answers in time."""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from collections.abc import Callable
from typing import Any

from fastapi.testclient import TestClient

from db.storage import ObjectStore
from scheduler.settings import ApiSettings
from tests.scheduler.conftest import Credentials


def test_more_than_eight_images_is_a_422(api: TestClient, tenant: Credentials) -> None:
    """Given count 9, when asking for a preview, then 422 names count."""
    response = api.post("/v1/previews", json={"category": "a", "count": 9}, headers=tenant.headers)
    assert response.status_code == 422 and response.json()["errors"][0]["field"] == "count"


def test_an_unknown_category_is_a_422(api: TestClient, tenant: Credentials) -> None:
    """Given a category the model lacks, when asking for a preview, then 422 names category."""
    response = api.post("/v1/previews", json={"category": "zebra"}, headers=tenant.headers)
    assert response.status_code == 422 and response.json()["errors"][0]["field"] == "category"


def test_no_worker_answering_is_a_503_within_the_timeout(
    make_api: Callable[..., TestClient], model_version: Any, tenant: Credentials
) -> None:
    """Given no worker on the interactive queue, when a preview is asked for, then 503 after the timeout."""
    api = make_api(ApiSettings(preview_timeout_seconds=0.5))
    response = api.post("/v1/previews", json={"category": "a", "count": 2}, headers=tenant.headers)
    assert response.status_code == 503
    assert "interactive" in response.json()["detail"]


def test_a_result_written_by_a_worker_comes_back_inline(
    make_api: Callable[..., TestClient], model_version: Any, tenant: Credentials, api_store: ObjectStore
) -> None:
    """Given a worker that writes the preview result contract into the store, when a preview is asked for,
    then its PNGs come back base64-encoded with their sha256, under the tenant's prefix only."""
    api = make_api(ApiSettings(preview_timeout_seconds=10))
    services = api.app.state.services  # type: ignore[attr-defined]
    sent: list[dict[str, Any]] = []

    def fake_worker(name: str, args: list[dict[str, Any]], queue: str, expires: float) -> None:
        request = args[0]
        sent.append({"name": name, "queue": queue, "expires": expires, **request})

        def write() -> None:
            entries = []
            for index in range(request["count"]):
                key = f"{request['key_prefix']}/{index:02d}.png"
                api_store.put(key, b"\x89PNG" + bytes([index]))
                entries.append({"index": index, "category": request["category"], "key": key})
            api_store.put(f"{request['key_prefix']}/result.json", json.dumps({"images": entries}).encode())

        threading.Timer(0.2, write).start()

    services.send_task = fake_worker
    response = api.post("/v1/previews", json={"category": "B", "count": 3, "seed": 4}, headers=tenant.headers)

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["seed"] == 4 and body["model"] == {"name": "tiny", "version": 1}
    assert sent[0]["name"] == "catalogan.generate_preview" and sent[0]["queue"] == "interactive"
    assert sent[0]["expires"] == 10  # the message expires with the request
    assert sent[0]["category"] == "b" and sent[0]["class_index"] == 1
    assert sent[0]["key_prefix"].startswith(f"{tenant.tenant_id}/previews/")
    for image in body["images"]:
        data = base64.b64decode(image["png_base64"])
        assert hashlib.sha256(data).hexdigest() == image["sha256"]
