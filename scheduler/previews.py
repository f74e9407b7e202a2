"""Previews: up to 8 images generated synchronously through the `interactive` queue.

There is no Celery result backend (progress lives in SQL), so the answer travels through the object store:
the API sends `PREVIEW_TASK` by name with one JSON argument

    {"preview_id", "tenant_id", "model_version_id", "category", "class_index", "count", "seed", "truncation",
     "key_prefix"}

and polls `<key_prefix>/result.json`, which the worker writes last:

    {"images": [{"index": 0, "category": "dress", "key": "<key_prefix>/00.png", "sha256": "..."}]}
    or {"error": "..."}

`key_prefix` is `<tenant>/previews/<preview_id>`, under the tenant's prefix like every object of theirs.
Image `i` is the same pure function of (model version, seed, i, category, ψ) as in a bulk job; `truncation` is
always sent, 1.0 (off) when the client gave none.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import anyio

from db.errors import ObjectNotFoundError, ServiceUnavailableError
from db.job_specs import MAX_SEED
from db.messaging import INTERACTIVE_QUEUE, PREVIEW_TASK
from db.storage.base import ObjectStore
from db.tables import ModelVersion
from scheduler.api.limits import ConcurrencyLimiter
from scheduler.errors import PreviewTimeoutError, RequestValidationError

POLL_INTERVAL_SECONDS = 0.1  # first poll; each next one waits 1.5x longer, up to the max
MAX_POLL_INTERVAL_SECONDS = 0.5
# A preview slot frees itself this long after the request's timeout, should the API process die holding it.
SLOT_GRACE_SECONDS = 10.0
RESULT_NAME = "result.json"


@dataclass(frozen=True)
class PreviewImage:
    """One preview image: its index, category, sha256 and PNG bytes base64-encoded."""

    index: int
    category: str
    sha256: str
    png_base64: str


@dataclass(frozen=True)
class Preview:
    """The images of one preview and what made them (the route turns it into its wire schema)."""

    model_name: str
    model_version: int
    seed: int
    truncation: float  # ψ the images were made with; 1.0 = off
    images: list[PreviewImage]


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


def _result_or_none(store: ObjectStore, key: str) -> bytes | None:
    try:
        return store.get(key)
    except ObjectNotFoundError:
        return None


async def run_preview(
    send_task: Callable[..., Any],
    store: ObjectStore,
    model: ModelVersion,
    *,
    tenant_id: str,
    category: str,
    count: int,
    seed: int | None,
    truncation: float | None = None,
    timeout_seconds: float,
    threads: anyio.CapacityLimiter,
    slots: ConcurrencyLimiter,
    max_concurrent: int,
    client_gone: Callable[[], Awaitable[bool]] | None = None,
) -> Preview:
    """Send one preview task and wait for its result in the object store; raise `PreviewTimeoutError`.

    Bounded before any work: the tenant takes one of its `max_concurrent` preview slots (else 429) and the
    category is checked. `truncation` is ψ as the request's schema checked it (None = 1.0, off). The wait is
    asynchronous: between polls the request holds no thread at all, and each blocking call (broker send,
    store read) runs on `threads`, the previews' own small pool. The task message
    expires with the request (`expires`), so a worker that comes back later does not generate for nobody.
    """
    name, class_index = class_index_of(model, category)
    seed = seed if seed is not None else secrets.randbelow(MAX_SEED)
    preview_id = uuid.uuid4().hex
    hold = partial(
        slots.acquire,
        tenant_id,
        preview_id,
        limit=max_concurrent,
        hold_seconds=timeout_seconds + SLOT_GRACE_SECONDS,
    )
    await anyio.to_thread.run_sync(hold, limiter=threads)
    try:
        return await _send_and_wait(
            send_task,
            store,
            model,
            name=name,
            class_index=class_index,
            tenant_id=tenant_id,
            preview_id=preview_id,
            count=count,
            seed=seed,
            truncation=1.0 if truncation is None else float(truncation),
            timeout_seconds=timeout_seconds,
            threads=threads,
            client_gone=client_gone,
        )
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(slots.release, tenant_id, preview_id, limiter=threads)


async def _send_and_wait(
    send_task: Callable[..., Any],
    store: ObjectStore,
    model: ModelVersion,
    *,
    name: str,
    class_index: int,
    tenant_id: str,
    preview_id: str,
    count: int,
    seed: int,
    truncation: float,
    timeout_seconds: float,
    threads: anyio.CapacityLimiter,
    client_gone: Callable[[], Awaitable[bool]] | None,
) -> Preview:
    key_prefix = f"{tenant_id}/previews/{preview_id}"
    request = {
        "preview_id": preview_id,
        "tenant_id": tenant_id,
        "model_version_id": model.id,
        "category": name,
        "class_index": class_index,
        "count": count,
        "seed": seed,
        "truncation": truncation,
        "key_prefix": key_prefix,
    }
    deadline = time.monotonic() + timeout_seconds
    send = partial(send_task, PREVIEW_TASK, args=[request], queue=INTERACTIVE_QUEUE, expires=timeout_seconds)
    try:
        await anyio.to_thread.run_sync(send, limiter=threads)
    except Exception as exc:  # kombu/redis errors: the broker is down
        raise ServiceUnavailableError(f"broker refused the preview: {exc}") from exc
    result_key = f"{key_prefix}/{RESULT_NAME}"
    interval = POLL_INTERVAL_SECONDS
    while True:
        raw = await anyio.to_thread.run_sync(_result_or_none, store, result_key, limiter=threads)
        if raw is not None:
            result = json.loads(raw)
            break
        if time.monotonic() >= deadline:
            raise PreviewTimeoutError(
                f"no worker on the '{INTERACTIVE_QUEUE}' queue answered within {timeout_seconds:g} s"
            )
        if client_gone is not None and await client_gone():
            raise PreviewTimeoutError("the client went away before the preview was ready")
        await anyio.sleep(min(interval, max(0.0, deadline - time.monotonic())))
        interval = min(interval * 1.5, MAX_POLL_INTERVAL_SECONDS)
    if "error" in result:
        raise ServiceUnavailableError(f"preview failed: {result['error']}")
    entries = [(int(entry["index"]), str(entry["key"])) for entry in result["images"]]
    for _, key in entries:
        if not key.startswith(f"{key_prefix}/"):
            raise ServiceUnavailableError("preview result points outside its prefix")
    blobs = await anyio.to_thread.run_sync(lambda: [store.get(key) for _, key in entries], limiter=threads)
    images = [
        PreviewImage(
            index=index,
            category=name,
            sha256=hashlib.sha256(data).hexdigest(),
            png_base64=base64.b64encode(data).decode(),
        )
        for (index, _), data in zip(entries, blobs, strict=True)
    ]
    return Preview(
        model_name=model.name, model_version=model.version, seed=seed, truncation=truncation, images=images
    )
