"""Previews: up to 8 images generated synchronously through the `interactive` queue.

There is no Celery result backend (progress lives in SQL), so the answer travels through the object store:
the API sends `PREVIEW_TASK` by name with one JSON argument

    {"preview_id", "tenant_id", "model_version_id", "category", "class_index", "count", "seed", "key_prefix"}

and polls `<key_prefix>/result.json`, which the worker writes last:

    {"images": [{"index": 0, "category": "dress", "key": "<key_prefix>/00.png", "sha256": "..."}]}
    or {"error": "..."}

`key_prefix` is `<tenant>/previews/<preview_id>`, under the tenant's prefix like every object of theirs.
Image `i` is the same pure function of (model version, seed, i, category) as in a bulk job.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import time
import uuid
from collections.abc import Callable
from typing import Any

from db.errors import ObjectNotFoundError
from db.messaging import INTERACTIVE_QUEUE
from db.storage.base import ObjectStore
from db.tables import ModelVersion
from scheduler.api.schemas import MAX_SEED, ModelVersionRef, PreviewImagePublic, PreviewPublic
from scheduler.errors import PreviewTimeoutError, RequestValidationError, ServiceUnavailableError

PREVIEW_TASK = "catalogan.generate_preview"
POLL_INTERVAL_SECONDS = 0.1
RESULT_NAME = "result.json"


def class_index_of(model: ModelVersion, category: str) -> tuple[str, int]:
    """The canonical category name and class index (case-insensitive match), or a 422 naming `category`."""
    for index, name in enumerate(str(c) for c in model.categories or []):
        if name.casefold() == category.casefold():
            return name, index
    raise RequestValidationError(
        "category",
        "model_category",
        f"category: {category!r} is not a category of {model.name}@{model.version}",
    )


def run_preview(
    send_task: Callable[..., Any],
    store: ObjectStore,
    model: ModelVersion,
    *,
    tenant_id: str,
    category: str,
    count: int,
    seed: int | None,
    timeout_seconds: float,
) -> PreviewPublic:
    """Send one preview task and wait for its result in the object store; raise `PreviewTimeoutError`."""
    name, class_index = class_index_of(model, category)
    seed = seed if seed is not None else secrets.randbelow(MAX_SEED)
    preview_id = uuid.uuid4().hex
    key_prefix = f"{tenant_id}/previews/{preview_id}"
    request = {
        "preview_id": preview_id,
        "tenant_id": tenant_id,
        "model_version_id": model.id,
        "category": name,
        "class_index": class_index,
        "count": count,
        "seed": seed,
        "key_prefix": key_prefix,
    }
    try:
        send_task(PREVIEW_TASK, args=[request], queue=INTERACTIVE_QUEUE)
    except Exception as exc:  # kombu/redis errors: the broker is down
        raise ServiceUnavailableError(f"broker refused the preview: {exc}") from exc
    deadline = time.monotonic() + timeout_seconds
    result_key = f"{key_prefix}/{RESULT_NAME}"
    while True:
        try:
            result = json.loads(store.get(result_key))
            break
        except ObjectNotFoundError:
            if time.monotonic() >= deadline:
                raise PreviewTimeoutError(
                    f"no worker on the '{INTERACTIVE_QUEUE}' queue answered within {timeout_seconds:g} s"
                ) from None
            time.sleep(POLL_INTERVAL_SECONDS)
    if "error" in result:
        raise ServiceUnavailableError(f"preview failed: {result['error']}")
    images = []
    for entry in result["images"]:
        key = str(entry["key"])
        if not key.startswith(f"{key_prefix}/"):
            raise ServiceUnavailableError("preview result points outside its prefix")
        data = store.get(key)
        images.append(
            PreviewImagePublic(
                index=int(entry["index"]),
                category=name,
                sha256=hashlib.sha256(data).hexdigest(),
                png_base64=base64.b64encode(data).decode(),
            )
        )
    return PreviewPublic(
        model=ModelVersionRef(name=model.name, version=model.version), seed=seed, images=images
    )
