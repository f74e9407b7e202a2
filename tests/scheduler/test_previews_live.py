"""`POST /v1/previews` end to end: the API on uvicorn, a real `catalogan worker` subprocess on the `interactive`
queue, PostgreSQL, Redis and SeaweedFS S3; the worker's `catalogan.generate_preview` answers through the store."""

from __future__ import annotations

import base64
import hashlib
import io
import json
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image as PILImage

from tests.pipeline import wait_for
from tests.scheduler.conftest import LiveStack
from workers.encoding import AI_GENERATED_MARKER, IPTC_TRAINED_ALGORITHMIC_MEDIA

pytestmark = [pytest.mark.integration, pytest.mark.slow]

WORKER_READY_SECONDS = 180
REQUEST_SECONDS = 60


def _preview(http: httpx.Client, **body: Any) -> dict[str, Any]:
    response = http.post("/v1/previews", json=body)
    assert response.status_code == 200, response.text
    payload: dict[str, Any] = response.json()
    return payload


def _decoded(image: dict[str, Any]) -> tuple[bytes, PILImage.Image]:
    data = base64.b64decode(image["png_base64"])
    png = PILImage.open(io.BytesIO(data))
    png.load()
    return data, png


def test_a_preview_is_generated_by_a_real_worker_deterministically(live_stack: LiveStack) -> None:
    """Given the live stack with a worker consuming `interactive`,
    when a tenant asks twice for 3 previews of category b with seed 5 and once with seed 6,
    then each answer is 200 with 3 decodable 8x8 PNGs carrying catalogan provenance, the two seed-5 answers
    are byte-identical, seed 6 gives other images, and every file sits under the tenant's previews prefix."""
    wait_for(
        lambda: "ready" in live_stack.worker.log(),
        timeout=WORKER_READY_SECONDS,
        what="the worker to be ready",
    )
    with httpx.Client(
        base_url=live_stack.url, headers=live_stack.tenant.headers, timeout=REQUEST_SECONDS
    ) as http:
        first = _preview(http, category="B", count=3, seed=5)
        again = _preview(http, category="b", count=3, seed=5)
        other = _preview(http, category="b", count=1, seed=6)

    assert first["model"] == {"name": "tiny", "version": 1} and first["seed"] == 5
    assert [image["index"] for image in first["images"]] == [0, 1, 2]
    for image in first["images"]:
        data, png = _decoded(image)
        assert image["category"] == "b"
        assert hashlib.sha256(data).hexdigest() == image["sha256"]
        assert png.format == "PNG" and png.size == (8, 8)
        assert png.info["catalogan:ai_generated"] == AI_GENERATED_MARKER
        assert png.info["catalogan:model_version"] == "tiny@1"
        assert (png.info["catalogan:seed"], png.info["catalogan:index"]) == ("5", str(image["index"]))
        assert png.info["catalogan:category"] == "b"
        assert IPTC_TRAINED_ALGORITHMIC_MEDIA in png.info["XML:com.adobe.xmp"]
    assert [image["sha256"] for image in again["images"]] == [image["sha256"] for image in first["images"]]
    pixels = [np.asarray(_decoded(image)[1]) for image in first["images"]]
    assert not np.array_equal(np.asarray(_decoded(other["images"][0])[1]), pixels[0])
    assert not np.array_equal(pixels[0], pixels[1])  # each index has its own latent

    tenant_prefix = f"{live_stack.tenant.tenant_id}/previews/"
    keys = [info.key for info in live_stack.store.list(tenant_prefix)]
    results = [key for key in keys if key.endswith("/result.json")]
    assert len(results) == 3 and len([key for key in keys if key.endswith(".png")]) == 7
    for key in results:
        assert "images" in json.loads(live_stack.store.get(key))
