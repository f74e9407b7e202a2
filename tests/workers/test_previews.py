"""The worker side of previews (`workers.previews.generate_preview`): validation, files, result, determinism."""

from __future__ import annotations

import dataclasses
import io
import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

import numpy as np
import pytest
from PIL import Image as PILImage
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from db.messaging import INTERACTIVE_QUEUE
from db.pipeline_settings import WorkerSettings
from db.planning import parse_job_spec, submit_job
from db.storage import ObjectStore
from db.tables import Image, ModelVersion
from tests.pipeline import make_model_version, make_tenant, tiny_checkpoint
from workers.chunk_generation import ChunkContext, ChunkOutcome, generate_chunk
from workers.encoding import IPTC_TRAINED_ALGORITHMIC_MEDIA, Provenance, encode_with_digest
from workers.errors import PreviewRequestError
from workers.generator_cache import GeneratorCache
from workers.pixels import inference_fields, render_pixels
from workers.previews import PREVIEW_JOB_ID, generate_preview, parse_request
from workers.tasks import PREVIEW_TASK
from workers.verification import read_provenance


@pytest.fixture
def model(session_factory: sessionmaker[Session], local_store: ObjectStore) -> ModelVersion:
    """`tiny@1` (categories a, b, c) with a random tiny checkpoint in the local store."""
    return make_model_version(session_factory, checkpoint=tiny_checkpoint(seed=3), store=local_store)


@pytest.fixture
def generators(local_store: ObjectStore) -> GeneratorCache:
    """A CPU generator cache on the local store."""
    return GeneratorCache(local_store, device="cpu")


def _request(model: ModelVersion, **changes: Any) -> dict[str, Any]:
    request: dict[str, Any] = {
        "preview_id": "p1",
        "tenant_id": "t1",
        "model_version_id": model.id,
        "category": "b",
        "class_index": 1,
        "count": 3,
        "seed": 11,
        "key_prefix": "t1/previews/p1",
    }
    return {**request, **changes}


def _run(
    request: Any, session_factory: sessionmaker[Session], store: ObjectStore, generators: GeneratorCache
) -> Any:
    return generate_preview(request, session_factory=session_factory, store=store, generators=generators)


def test_the_worker_registers_the_task_name_the_api_sends() -> None:
    """Given the API's and the worker's task names, then they are the contract's one name."""
    from scheduler.previews import PREVIEW_TASK as API_PREVIEW_TASK

    assert PREVIEW_TASK == API_PREVIEW_TASK == "catalogan.generate_preview"


def test_a_key_prefix_of_another_tenant_is_refused_and_nothing_is_written_there(
    session_factory: sessionmaker[Session],
    local_store: ObjectStore,
    generators: GeneratorCache,
    model: ModelVersion,
) -> None:
    """Given a request for tenant t1 whose key_prefix points into tenant t2's previews,
    when the worker runs it, then nothing appears under t2 and the refusal is answered at t1's own prefix."""
    request = _request(model, key_prefix="t2/previews/p1")

    result = _run(request, session_factory, local_store, generators)

    assert "key_prefix" in result["error"]
    assert list(local_store.list("t2/")) == []
    assert json.loads(local_store.get("t1/previews/p1/result.json")) == result
    assert [info.key for info in local_store.list("t1/") if info.key.endswith(".png")] == []


@pytest.mark.parametrize(
    "changes",
    [
        {"tenant_id": "../t2", "key_prefix": "../t2/previews/p1"},
        {"preview_id": "a/b", "key_prefix": "t1/previews/a/b"},
        {"tenant_id": "..", "key_prefix": "../previews/p1"},
    ],
)
def test_ids_that_are_not_one_path_segment_are_refused_without_writing_anything(
    changes: dict[str, str],
    session_factory: sessionmaker[Session],
    local_store: ObjectStore,
    generators: GeneratorCache,
    model: ModelVersion,
) -> None:
    """Given ids that would escape the tenant's prefix, when the worker runs the request, then it writes no file."""
    before = {info.key for info in local_store.list("")}
    assert _run(_request(model, **changes), session_factory, local_store, generators) is None
    assert {info.key for info in local_store.list("")} == before
    with pytest.raises(PreviewRequestError):
        parse_request(_request(model, **changes))


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"count": 0}, "count"),
        ({"count": 9}, "count"),
        ({"count": True}, "count"),
        ({"seed": -1}, "seed"),
        ({"class_index": 2}, "class_index"),  # category b is index 1
        ({"model_version_id": 999_999}, "model_version_id"),
    ],
)
def test_a_bad_request_is_answered_with_an_error_result_naming_the_field(
    changes: dict[str, Any],
    field: str,
    session_factory: sessionmaker[Session],
    local_store: ObjectStore,
    generators: GeneratorCache,
    model: ModelVersion,
) -> None:
    """Given a request breaking the contract, when the worker runs it, then result.json holds an error naming it."""
    result = _run(_request(model, **changes), session_factory, local_store, generators)
    assert field in result["error"]
    assert json.loads(local_store.get("t1/previews/p1/result.json")) == result


def test_a_checkpoint_that_cannot_be_read_is_answered_not_silent(
    session_factory: sessionmaker[Session], local_store: ObjectStore, generators: GeneratorCache
) -> None:
    """Given a model version whose checkpoint is missing, when a preview runs, then result.json carries the error."""
    missing = make_model_version(session_factory, name="ghost")  # checkpoint_uri memory://..., never stored
    result = _run(_request(missing), session_factory, local_store, generators)
    assert "error" in result
    assert json.loads(local_store.get("t1/previews/p1/result.json")) == result


class _OrderStore:
    """Wraps a store and records the order of its writes (the result file must come last)."""

    def __init__(self, inner: ObjectStore) -> None:
        self.inner = inner
        self.url = inner.url
        self.puts: list[str] = []

    def put(self, key: str, data: bytes, **kwargs: Any) -> None:
        self.puts.append(key)
        self.inner.put(key, data, **kwargs)

    def get(self, key: str) -> bytes:
        return self.inner.get(key)


def _pixels(data: bytes) -> np.ndarray:
    return np.asarray(PILImage.open(io.BytesIO(data)))


@pytest.fixture
def context(
    session_factory: sessionmaker[Session], local_store: ObjectStore, generators: GeneratorCache
) -> Iterator[ChunkContext]:
    """A chunk worker context sharing the preview's store and generator cache."""
    pool = ThreadPoolExecutor(max_workers=2)
    yield ChunkContext(
        session_factory=session_factory,
        store=local_store,
        generators=generators,
        settings=WorkerSettings(batch_size=2, upload_threads=2),
        worker_name="test-worker",
        pool=pool,
    )
    pool.shutdown(wait=True)


def _run_job(context: ChunkContext, model: ModelVersion, spec: dict[str, Any]) -> dict[int, bytes]:
    """Submit a job of `model` and run its chunks in-process; its delivered files by index."""
    planned = submit_job(
        context.session_factory,
        parse_job_spec({"model": "tiny", **spec}),
        tenant_id=make_tenant(context.session_factory),
        model_version=model,
        publisher=lambda queue, ids: None,
    )
    outcomes = [generate_chunk(context, chunk_id) for chunk_id in planned.chunk_ids]
    assert outcomes == [ChunkOutcome.SUCCEEDED] * len(outcomes)
    with context.session_factory() as session:
        rows = session.scalars(select(Image).where(Image.job_id == planned.job_id)).all()
        return {row.index: context.store.get(str(row.key)) for row in rows}


def _as_preview_file(job_file: bytes) -> bytes:
    """The file a job delivered, re-encoded as a preview of it would be: its own pixels and provenance with
    `job_id` set to `preview` (the one field in which a preview's file may differ from the job's)."""
    claimed = read_provenance(job_file).provenance
    pixels = _pixels(job_file)[:, :, None]  # (H, W) grey -> (H, W, 1)
    return encode_with_digest(pixels, "png", dataclasses.replace(claimed, job_id=PREVIEW_JOB_ID)).data


def test_preview_images_are_the_pixels_a_job_with_the_same_seed_delivers(
    context: ChunkContext, model: ModelVersion, local_store: ObjectStore, generators: GeneratorCache
) -> None:
    """Given a 4-image job of category b with seed 11 run by the chunk worker,
    when a preview of 3 images of b with seed 11 runs, then PNGs 00..02 come first, result.json last,
    each decodes to the job's image i pixel for pixel and names the model, seed, index and category."""
    job_files = _run_job(context, model, {"items": [{"category": "b", "count": 4}], "seed": 11})
    store = _OrderStore(local_store)

    result = generate_preview(
        _request(model),
        session_factory=context.session_factory,
        store=cast(ObjectStore, store),
        generators=generators,
    )
    assert result is not None

    keys = [f"t1/previews/p1/{index:02d}.png" for index in range(3)]
    assert store.puts == [*keys, "t1/previews/p1/result.json"]
    assert [image["key"] for image in result["images"]] == keys
    assert json.loads(local_store.get("t1/previews/p1/result.json")) == result
    for index, key in enumerate(keys):
        data = local_store.get(key)
        assert np.array_equal(_pixels(data), _pixels(job_files[index]))
        info = PILImage.open(io.BytesIO(data)).info
        assert info["catalogan:model_version"] == "tiny@1" and info["catalogan:seed"] == "11"
        assert info["catalogan:index"] == str(index) and info["catalogan:category"] == "b"
        assert info["catalogan:job_id"] == "preview"
        assert IPTC_TRAINED_ALGORITHMIC_MEDIA in info["XML:com.adobe.xmp"]


def test_two_previews_with_the_same_seed_give_the_same_bytes(
    session_factory: sessionmaker[Session],
    local_store: ObjectStore,
    generators: GeneratorCache,
    model: ModelVersion,
) -> None:
    """Given two previews (different ids) of the same model, category and seed, when both run,
    then their files are byte-identical, and a third with another seed differs."""
    first = _run(_request(model), session_factory, local_store, generators)
    second = _run(
        _request(model, preview_id="p2", key_prefix="t1/previews/p2"),
        session_factory,
        local_store,
        generators,
    )
    other = _run(
        _request(model, preview_id="p3", key_prefix="t1/previews/p3", seed=12),
        session_factory,
        local_store,
        generators,
    )
    assert [image["sha256"] for image in second["images"]] == [image["sha256"] for image in first["images"]]
    assert [local_store.get(image["key"]) for image in second["images"]] == [
        local_store.get(image["key"]) for image in first["images"]
    ]
    assert other["images"][0]["sha256"] != first["images"][0]["sha256"]


def test_a_preview_with_truncation_is_the_file_a_job_with_that_truncation_delivers(
    context: ChunkContext, model: ModelVersion, local_store: ObjectStore, generators: GeneratorCache
) -> None:
    """Given a job of 4 images of b with seed 11 and ψ 0.7 run by the chunk worker,
    when a preview of 3 images of b with seed 11 and ψ 0.7 runs, then image i is the job's image i byte for
    byte but for `job_id` (same pixels, same recipe fields), and differs from the preview without ψ."""
    job_files = _run_job(
        context, model, {"items": [{"category": "b", "count": 4}], "seed": 11, "truncation": 0.7}
    )

    result = _run(_request(model, truncation=0.7), context.session_factory, local_store, generators)
    plain = _run(
        _request(model, preview_id="p2", key_prefix="t1/previews/p2"),
        context.session_factory,
        local_store,
        generators,
    )

    assert [image["index"] for image in result["images"]] == [0, 1, 2]
    for image, without in zip(result["images"], plain["images"], strict=True):
        data = local_store.get(image["key"])
        assert data == _as_preview_file(job_files[image["index"]])
        info = PILImage.open(io.BytesIO(data)).info
        assert info["catalogan:truncation"] == "0.7"
        assert info["catalogan:latent_control"] == '{"truncation":0.7}'
        assert not np.array_equal(_pixels(data), _pixels(local_store.get(without["key"])))


@pytest.mark.parametrize("psi", [1.0, 1, None], ids=["1.0", "integer-1", "absent"])
def test_truncation_one_or_absent_gives_the_plain_preview_bytes(
    psi: float | None,
    session_factory: sessionmaker[Session],
    local_store: ObjectStore,
    generators: GeneratorCache,
    model: ModelVersion,
) -> None:
    """Given a preview request with ψ 1.0, or without the field (an API from before ψ),
    when the worker runs it, then each file is the plain latents' pixels with no recipe fields: the bytes a
    preview had before ψ existed."""
    request = _request(model) if psi is None else _request(model, truncation=psi)

    result = _run(request, session_factory, local_store, generators)

    generator = generators.get(model)
    pixels = render_pixels(generator, 11, 1, [0, 1, 2])  # (B, H, W, C): plain latents, no recipe
    for image in result["images"]:
        index = image["index"]
        plain = Provenance(
            model_version="tiny@1",
            checkpoint_sha256=str(model.checkpoint_sha256),
            job_id=PREVIEW_JOB_ID,
            index=index,
            seed=11,
            category="b",
            sku=None,
            inference=inference_fields(generator),
        )
        expected = encode_with_digest(pixels[index], "png", plain)
        assert local_store.get(image["key"]) == expected.data and image["sha256"] == expected.sha256
    assert parse_request(request).truncation == 1.0


@pytest.mark.parametrize(
    "psi", [5.0, float("nan"), float("inf"), 0.2, 0.0, -0.7, True, "0.7", None, [0.7]], ids=repr
)
def test_a_truncation_outside_the_jobs_rule_sent_to_the_queue_is_refused_not_rendered(
    psi: object,
    session_factory: sessionmaker[Session],
    local_store: ObjectStore,
    generators: GeneratorCache,
    model: ModelVersion,
) -> None:
    """Given a task payload whose ψ a job could not have (out of 0.3..1.0, not finite, not a number) sent
    straight to the queue, when the worker runs it, then result.json is an error naming truncation and no
    image is written."""
    result = _run(_request(model, truncation=psi), session_factory, local_store, generators)

    assert "truncation" in result["error"]
    assert json.loads(local_store.get("t1/previews/p1/result.json")) == result
    assert [info.key for info in local_store.list("t1/") if info.key.endswith(".png")] == []


def test_a_worker_started_without_queues_consumes_the_interactive_queue(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Given no CATALOGAN_QUEUES, when `catalogan worker` reads its settings, then previews' queue is among them."""
    monkeypatch.delenv("CATALOGAN_QUEUES", raising=False)
    assert INTERACTIVE_QUEUE in WorkerSettings().queue_names
