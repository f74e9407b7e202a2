"""`POST /v1/previews`: bounded to 8 images, a clear 503 when no worker answers in time, and ψ carried to the
worker and rendered as a job renders it."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import io
import json
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image as PILImage
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from db.pipeline_settings import WorkerSettings
from db.storage import ObjectStore
from db.tables import Chunk, Image
from scheduler.client import Client
from scheduler.settings import ApiSettings
from tests.pipeline import make_model_version, tiny_checkpoint
from tests.scheduler.conftest import Credentials
from workers.chunk_generation import ChunkContext, ChunkOutcome, generate_chunk
from workers.encoding import encode_with_digest
from workers.generator_cache import GeneratorCache
from workers.previews import PREVIEW_JOB_ID, generate_preview
from workers.verification import read_provenance


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


@pytest.mark.parametrize(
    "literal",
    [b"0.2", b"0.29", b"1.01", b"5.0", b"0", b'"0.7"', b"true", b"NaN", b"Infinity", b"-Infinity", b"1e309"],
)
def test_a_truncation_a_job_refuses_is_the_same_422_for_a_preview(
    literal: bytes, api: TestClient, tenant: Credentials
) -> None:
    """Given a ψ a job refuses (outside 0.3–1.0, not a JSON number, not finite: NaN and Infinity are JSON
    extensions a lax client may send), when a preview asks for it, then the answer is a 422 with the very
    errors a submit gets (field `truncation`, same rule and message), and no task is sent."""
    services = api.app.state.services  # type: ignore[attr-defined]
    sent: list[Any] = []
    services.send_task = lambda *args, **kwargs: sent.append(args)
    headers = {**tenant.headers, "Content-Type": "application/json"}

    preview = api.post(
        "/v1/previews", content=b'{"category": "a", "truncation": ' + literal + b"}", headers=headers
    )
    job = api.post(
        "/v1/jobs",
        content=b'{"items": [{"category": "a", "count": 1}], "truncation": ' + literal + b"}",
        headers=headers,
    )

    assert preview.status_code == job.status_code == 422, preview.text
    assert preview.json()["errors"] == job.json()["errors"]
    assert preview.json()["errors"][0]["field"] == "truncation"
    assert sent == []


def _answer_with_stand_in_images(api_store: ObjectStore, sent: list[dict[str, Any]]) -> Callable[..., None]:
    """A stand-in worker: records each request and writes its result contract at once."""

    def answer(name: str, args: list[dict[str, Any]], queue: str, expires: float) -> None:
        request = args[0]
        sent.append(request)
        key = f"{request['key_prefix']}/00.png"
        api_store.put(key, b"\x89PNG")
        entry = {"index": 0, "category": request["category"], "key": key}
        api_store.put(f"{request['key_prefix']}/result.json", json.dumps({"images": [entry]}).encode())

    return answer


@pytest.mark.parametrize(
    ("body", "psi"),
    [
        ({"truncation": 0.7}, 0.7),
        ({"truncation": 0.3}, 0.3),
        ({"truncation": 1.0}, 1.0),
        ({"truncation": 1}, 1.0),
        ({"truncation": None}, 1.0),
        ({}, 1.0),
    ],
)
def test_truncation_goes_into_the_task_and_the_answer_echoes_it(
    body: dict[str, Any],
    psi: float,
    make_api: Callable[..., TestClient],
    model_version: Any,
    tenant: Credentials,
    api_store: ObjectStore,
) -> None:
    """Given a preview with ψ 0.7, 0.3, 1.0, the integer 1, null or none, when it is asked for, then the task
    payload carries ψ as a float (1.0 when none was given: off, as for a job) and the answer names the ψ its
    images were made with."""
    api = make_api(ApiSettings(preview_timeout_seconds=10))
    sent: list[dict[str, Any]] = []
    api.app.state.services.send_task = _answer_with_stand_in_images(api_store, sent)  # type: ignore[attr-defined]

    response = api.post("/v1/previews", json={"category": "a", "count": 1, **body}, headers=tenant.headers)

    assert response.status_code == 200, response.text
    assert sent[0]["truncation"] == psi and type(sent[0]["truncation"]) is float
    assert response.json()["truncation"] == psi


@pytest.fixture
def rendering_api(
    make_api: Callable[..., TestClient], pg_factory: sessionmaker[Session], api_store: ObjectStore
) -> Iterator[tuple[TestClient, ChunkContext]]:
    """The app on `tiny@1` with a real checkpoint, its previews answered by the real worker function in
    process, and a chunk worker context on the same database and store (to run jobs)."""
    make_model_version(pg_factory, checkpoint=tiny_checkpoint(seed=3), store=api_store)
    generators = GeneratorCache(api_store, device="cpu")
    api = make_api(ApiSettings(preview_timeout_seconds=30))

    def worker(name: str, args: list[dict[str, Any]], queue: str, expires: float) -> None:
        generate_preview(args[0], session_factory=pg_factory, store=api_store, generators=generators)

    api.app.state.services.send_task = worker  # type: ignore[attr-defined]
    pool = ThreadPoolExecutor(max_workers=2)
    yield (
        api,
        ChunkContext(
            session_factory=pg_factory,
            store=api_store,
            generators=generators,
            settings=WorkerSettings(batch_size=2, upload_threads=2),
            worker_name="test-worker",
            pool=pool,
        ),
    )
    pool.shutdown(wait=True)


def test_the_sdk_previews_with_truncation_what_a_job_with_that_truncation_delivers(
    rendering_api: tuple[TestClient, ChunkContext], tenant: Credentials
) -> None:
    """Given a job of 4 images of b, seed 11, ψ 0.6 submitted over the API and run by the chunk worker,
    when the SDK previews 3 images of b with seed 11 and ψ 0.6, then each preview image is the job's image i
    byte for byte but for `job_id` (its file re-encoded as a preview), and the same preview without ψ differs."""
    api, context = rendering_api
    body = {"items": [{"category": "b", "count": 4}], "seed": 11, "truncation": 0.6}
    created = api.post("/v1/jobs", json=body, headers=tenant.headers)
    assert created.status_code == 201, created.text
    job_id = created.json()["id"]
    with context.session_factory() as session:
        chunk_ids = list(session.scalars(select(Chunk.id).where(Chunk.job_id == job_id)))
    outcomes = [generate_chunk(context, chunk_id) for chunk_id in chunk_ids]
    assert chunk_ids and outcomes == [ChunkOutcome.SUCCEEDED] * len(chunk_ids)
    with context.session_factory() as session:
        job_files = {
            row.index: context.store.get(str(row.key))
            for row in session.scalars(select(Image).where(Image.job_id == job_id))
        }

    with Client("http://testserver", tenant.api_key, transport=api._transport) as client:
        images = client.preview("b", count=3, seed=11, truncation=0.6)
        plain = client.preview("b", count=3, seed=11)

    assert [image.index for image in images] == [0, 1, 2]
    for image, without in zip(images, plain, strict=True):
        job_file = job_files[image.index]
        claimed = read_provenance(job_file).provenance
        pixels = np.asarray(PILImage.open(io.BytesIO(job_file)))[:, :, None]  # (H, W) grey -> (H, W, 1)
        expected = encode_with_digest(pixels, "png", dataclasses.replace(claimed, job_id=PREVIEW_JOB_ID))
        assert image.png == expected.data and image.sha256 == expected.sha256
        assert image.sha256 != without.sha256
