"""Gate overlap: batch k's quality gate in the gate thread while batch k+1 is forwarded (`_gated_batches`).

The overlap must change nothing a job delivers (pixels, scores, redraws, rejections), must really overlap
(the next forward pass starts while a gate is still running), and must leave no gate work behind when a
chunk stops midway.
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest
from PIL import Image as PILImage
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from db.pipeline_settings import WorkerSettings
from db.planning import parse_job_spec, submit_job
from db.settings import SettingsError
from db.status import ChunkStatus, ImageStatus
from db.storage import ObjectStore
from db.tables import Chunk, Image, ModelVersion
from tests.pipeline import make_model_version, make_tenant, tiny_checkpoint
from workers import chunk_generation
from workers.chunk_generation import ChunkContext, ChunkOutcome, generate_chunk
from workers.quality_gate import Scores, evaluator_scorer
from workers.shards import read_shard

# The tiny random generator's images score about 0.03 for category "a": a gate that redraws some images and
# rejects others (tests/workers/test_quality_gate.py).
HIGH_GATE = {"min_confidence": 0.036, "max_redraws": 2}


def _publish_nothing(queue: str, chunk_ids: Sequence[int]) -> None:
    """Chunks run in-process here."""


@pytest.fixture
def pools() -> Iterator[tuple[ThreadPoolExecutor, ThreadPoolExecutor]]:
    """The upload pool and the one-thread gate pool a worker with gate overlap has."""
    upload = ThreadPoolExecutor(max_workers=2, thread_name_prefix="upload")
    gate = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gate")
    yield upload, gate
    upload.shutdown(wait=True)
    gate.shutdown(wait=True)


def _context(
    session_factory: sessionmaker[Session],
    store: ObjectStore,
    pools: tuple[ThreadPoolExecutor, ThreadPoolExecutor],
    *,
    overlap: bool,
) -> ChunkContext:
    from workers.generator_cache import GeneratorCache

    upload, gate = pools
    return ChunkContext(
        session_factory=session_factory,
        store=store,
        generators=GeneratorCache(store, device="cpu"),
        settings=WorkerSettings(batch_size=8, upload_threads=2, max_attempts=3, retry_delay_seconds=0),
        worker_name="test-worker",
        pool=upload,
        gate_pool=gate if overlap else None,
    )


@pytest.fixture
def model(session_factory: sessionmaker[Session], local_store: ObjectStore) -> ModelVersion:
    """The tiny model version (categories a, b, c)."""
    return make_model_version(session_factory, checkpoint=tiny_checkpoint(), store=local_store)


def _submit(ctx: ChunkContext, model: ModelVersion, spec: dict[str, Any]) -> tuple[str, tuple[int, ...]]:
    planned = submit_job(
        ctx.session_factory,
        parse_job_spec(spec),
        tenant_id=make_tenant(ctx.session_factory),
        model_version=model,
        publisher=_publish_nothing,
    )
    return planned.job_id, planned.chunk_ids


def _pixels(data: bytes) -> np.ndarray:
    return np.asarray(PILImage.open(io.BytesIO(data)))


def _delivered(ctx: ChunkContext, job_id: str) -> list[tuple[Any, ...]]:
    """Per image in index order: status, score, redraws, and the pixels delivered (None when rejected)."""
    with ctx.session_factory() as session:
        rows = session.scalars(select(Image).where(Image.job_id == job_id).order_by(Image.index)).all()
        shards: dict[str, dict[str, bytes]] = {}
        delivered = []
        for row in rows:
            pixels = None
            if row.key is not None and row.key.endswith(".tar"):
                members = shards.setdefault(row.key, dict(read_shard(ctx.store.get(row.key))))
                pixels = _pixels(members[f"{row.index:08d}.png"])
            elif row.key is not None:
                pixels = _pixels(ctx.store.get(row.key))
            delivered.append((row.index, row.status, row.score, row.redraws, pixels))
        return delivered


@pytest.mark.parametrize("output_format", ["png", "tar"])
def test_gate_overlap_delivers_the_same_pixels_scores_redraws_and_rejections(
    session_factory: sessionmaker[Session],
    local_store: ObjectStore,
    pools: tuple[ThreadPoolExecutor, ThreadPoolExecutor],
    model: ModelVersion,
    output_format: str,
) -> None:
    # Given a 40-image job in chunks of 20 and batches of 8 (a short last batch), whose gate redraws some
    # images and rejects others
    spec = {
        "model": "tiny",
        "items": [{"category": "a", "count": 40}],
        "seed": 7,
        "chunk_size": 20,
        "output_format": output_format,
        "quality_gate": HIGH_GATE,
    }
    outcomes = {}
    for overlap in (False, True):
        # When it runs once with the gate after each forward pass and once with the gate overlapped
        ctx = _context(session_factory, local_store, pools, overlap=overlap)
        job_id, chunk_ids = _submit(ctx, model, spec)
        assert [generate_chunk(ctx, chunk_id) for chunk_id in chunk_ids] == [ChunkOutcome.SUCCEEDED] * 2
        outcomes[overlap] = _delivered(ctx, job_id)
    # Then both runs delivered the same images with the same scores, redraws and rejections
    serial, overlapped = outcomes[False], outcomes[True]
    assert [row[:4] for row in overlapped] == [row[:4] for row in serial]
    assert all(
        (a is None and b is None) or (a is not None and b is not None and np.array_equal(a, b))
        for a, b in zip((row[4] for row in serial), (row[4] for row in overlapped), strict=True)
    )
    # And the job exercised the gate: images passed at once, after redraws, and were rejected
    statuses = [row[1] for row in serial]
    assert ImageStatus.REJECTED in statuses and {
        row[3] for row in serial if row[1] is ImageStatus.SUCCEEDED
    } >= {
        0,
        1,
    }


class _BlockingScorer:
    """The real evaluator scorer, whose first call waits (up to 10 s) for `release`; records threads."""

    def __init__(self, release: threading.Event) -> None:
        self.scorer = evaluator_scorer(None)
        self.release = release
        self.released_in_time: bool | None = None
        self.threads: set[str] = set()
        self.active = 0
        self.lock = threading.Lock()

    def __call__(self, pixels: np.ndarray, class_index: int) -> Scores:
        with self.lock:
            self.active += 1
            self.threads.add(threading.current_thread().name)
            first = self.released_in_time is None
            if first:
                self.released_in_time = False
        try:
            if first:
                self.released_in_time = self.release.wait(timeout=10)
            else:
                time.sleep(0.05)
            return self.scorer(pixels, class_index)
        finally:
            with self.lock:
                self.active -= 1


def test_the_next_forward_pass_runs_while_the_gate_scores_the_batch_before(
    session_factory: sessionmaker[Session],
    local_store: ObjectStore,
    pools: tuple[ThreadPoolExecutor, ThreadPoolExecutor],
    model: ModelVersion,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a worker with gate overlap whose scorer holds its first batch until a second forward pass starts
    ctx = _context(session_factory, local_store, pools, overlap=True)
    second_forward = threading.Event()
    scorer = _BlockingScorer(second_forward)
    ctx.scorers[(model.id, None, "eager")] = scorer  # what `_gated` would build for it (no index, eager)
    forwards: list[str] = []
    forward = chunk_generation._forward

    def counting_forward(*args: Any) -> Any:
        forwards.append(threading.current_thread().name)
        if len(forwards) == 2:
            second_forward.set()
        return forward(*args)

    monkeypatch.setattr(chunk_generation, "_forward", counting_forward)
    job_id, chunk_ids = _submit(
        ctx,
        model,
        {
            "model": "tiny",
            "items": [{"category": "a", "count": 24}],
            "chunk_size": 24,
            "quality_gate": HIGH_GATE,
        },
    )
    # When its one chunk (three batches) runs
    assert generate_chunk(ctx, chunk_ids[0]) is ChunkOutcome.SUCCEEDED
    # Then the second forward pass started while the first batch was still being gated, in the gate thread
    assert scorer.released_in_time is True
    assert scorer.threads == {"gate_0"} and set(forwards) == {threading.current_thread().name}
    with ctx.session_factory() as session:
        assert len(session.scalars(select(Image).where(Image.job_id == job_id)).all()) == 24


def test_a_chunk_stopped_with_a_batch_in_the_gate_leaves_no_gate_work_behind(
    session_factory: sessionmaker[Session],
    local_store: ObjectStore,
    pools: tuple[ThreadPoolExecutor, ThreadPoolExecutor],
    model: ModelVersion,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a worker with gate overlap that is told to shut down during its second forward pass
    ctx = _context(session_factory, local_store, pools, overlap=True)
    ctx.shutdown = threading.Event()
    ready = threading.Event()
    ready.set()
    scorer = _BlockingScorer(ready)
    ctx.scorers[(model.id, None, "eager")] = scorer
    forward = chunk_generation._forward
    calls: list[int] = []

    def forward_then_shutdown(*args: Any) -> Any:
        calls.append(1)
        if len(calls) == 2:
            ctx.shutdown.set()
        return forward(*args)

    monkeypatch.setattr(chunk_generation, "_forward", forward_then_shutdown)
    job_id, chunk_ids = _submit(
        ctx,
        model,
        {
            "model": "tiny",
            "items": [{"category": "a", "count": 32}],
            "chunk_size": 32,
            "quality_gate": HIGH_GATE,
        },
    )
    # When the chunk runs
    outcome = generate_chunk(ctx, chunk_ids[0])
    # Then it was released after the batch it had uploaded; the batch that was in the gate finished there
    # before generate_chunk returned, and no third forward pass ran
    assert outcome is ChunkOutcome.RELEASED
    assert scorer.threads == {"gate_0"}  # the worker scored with this scorer (its cache key is `_gated`'s)
    assert scorer.active == 0 and len(calls) == 2
    with ctx.session_factory() as session:
        rows = session.scalars(select(Image).where(Image.job_id == job_id).order_by(Image.index)).all()
        chunk = session.get(Chunk, chunk_ids[0])
        assert chunk is not None and chunk.status is ChunkStatus.PENDING
    assert [row.index for row in rows] == list(range(8))
    # And the chunk, run again without a shutdown, delivers all 32 images
    ctx.shutdown.clear()
    monkeypatch.setattr(chunk_generation, "_forward", forward)
    assert generate_chunk(ctx, chunk_ids[0]) is ChunkOutcome.SUCCEEDED
    with ctx.session_factory() as session:
        assert len(session.scalars(select(Image).where(Image.job_id == job_id)).all()) == 32


@pytest.mark.parametrize(
    ("setting", "device", "expected"),
    [
        ("auto", "cpu", False),
        ("auto", "cuda", True),
        ("auto", "cuda:1", True),
        ("on", "cpu", True),
        ("off", "cuda", False),
    ],
)
def test_gate_overlap_is_on_for_cuda_by_default(setting: str, device: str, expected: bool) -> None:
    assert WorkerSettings(gate_overlap=setting).overlaps_gate(device) is expected  # type: ignore[arg-type]


def test_an_unknown_gate_overlap_setting_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CATALOGAN_GATE_OVERLAP", "sometimes")
    with pytest.raises(SettingsError, match="CATALOGAN_GATE_OVERLAP"):
        WorkerSettings()
