"""The per-image quality gate: evaluator scores, deterministic redraws, rejected images counted and listed."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from db.pipeline_settings import WorkerSettings
from db.planning import parse_job_spec, submit_job
from db.status import ImageStatus, JobStatus
from db.storage import ObjectStore
from db.tables import Image, ModelVersion
from tests.pipeline import job_row, make_model_version, make_tenant, tiny_checkpoint
from workers.chunk_generation import ChunkContext, ChunkOutcome, generate_chunk
from workers.finalize import finalize_job
from workers.generator_cache import GeneratorCache
from workers.shards import read_shard
from workers.verification import read_provenance, verify_file

# The tiny random generator's images score about 0.03 for category "a": 0.036 is a high bar for it.
HIGH_GATE = {"min_confidence": 0.036, "max_redraws": 2}
# A 40-image job with that gate: some images pass at once, some after redraws, some are rejected.
REDRAWING_JOB = {
    "model": "tiny",
    "items": [{"category": "a", "count": 40}],
    "seed": 42,
    "chunk_size": 20,
    "quality_gate": HIGH_GATE,
}


def _publish_nothing(queue: str, chunk_ids: Sequence[int]) -> None:
    """Chunks run in-process here."""


def _context(
    session_factory: sessionmaker[Session],
    store: ObjectStore,
    pool: ThreadPoolExecutor,
    backend: str = "eager",
) -> ChunkContext:
    """A worker context whose generators run on `backend` (the real shipped evaluator scores)."""
    return ChunkContext(
        session_factory=session_factory,
        store=store,
        generators=GeneratorCache(store, device="cpu", backend=backend),
        settings=WorkerSettings(batch_size=16, upload_threads=2),
        worker_name="test-worker",
        pool=pool,
        on_job_finished=lambda job_id: finalize_job(session_factory, store, job_id),
    )


@pytest.fixture
def context(session_factory: sessionmaker[Session], local_store: ObjectStore) -> Iterator[ChunkContext]:
    """A worker context on `db_url` and a local object folder."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        yield _context(session_factory, local_store, pool)


@pytest.fixture
def model(context: ChunkContext) -> ModelVersion:
    """The tiny model version (categories a, b, c)."""
    return make_model_version(context.session_factory, checkpoint=tiny_checkpoint(), store=context.store)


def _run(ctx: ChunkContext, model: ModelVersion, spec: dict[str, Any]) -> str:
    planned = submit_job(
        ctx.session_factory,
        parse_job_spec(spec),
        tenant_id=make_tenant(ctx.session_factory),
        model_version=model,
        publisher=_publish_nothing,
    )
    outcomes = [generate_chunk(ctx, chunk_id) for chunk_id in planned.chunk_ids]
    assert outcomes == [ChunkOutcome.SUCCEEDED] * len(planned.chunk_ids)
    return planned.job_id


def _outcome(ctx: ChunkContext, job_id: str) -> list[tuple[int, ImageStatus, float | None, int, str | None]]:
    with ctx.session_factory() as session:
        rows = session.scalars(select(Image).where(Image.job_id == job_id).order_by(Image.index)).all()
        return [(row.index, row.status, row.score, row.redraws, row.key) for row in rows]


def test_a_high_threshold_redraws_and_rejects_the_same_images_every_time(
    context: ChunkContext, model: ModelVersion
) -> None:
    # Given a 40-image job with a gate the tiny generator often misses
    # When the same job runs twice
    first, second = _run(context, model, REDRAWING_JOB), _run(context, model, REDRAWING_JOB)
    # Then some images pass at once, some after redraws, some are rejected after the last redraw
    outcome = _outcome(context, first)
    passed = [row for row in outcome if row[1] is ImageStatus.SUCCEEDED]
    rejected = [row for row in outcome if row[1] is ImageStatus.REJECTED]
    assert len(outcome) == 40 and {row[3] for row in passed} >= {0, 1} and rejected
    assert all(score is not None and score >= 0.036 for _, _, score, _, _ in passed)
    assert all(
        score is not None and score < 0.036 and redraws == 2 and key is None
        for _, _, score, redraws, key in rejected
    )
    # And the second run made exactly the same decisions with the same scores
    assert [row[:4] for row in _outcome(context, second)] == [row[:4] for row in outcome]
    # And the job counts include the rejected images; it succeeded (nothing failed)
    job = job_row(context.session_factory, first)
    assert (job.status, job.images_done, job.images_rejected, job.images_failed) == (
        JobStatus.SUCCEEDED,
        len(passed),
        len(rejected),
        0,
    )
    # And the manifest carries each image's status, score and redraws
    assert job.manifest_key is not None
    manifest = [json.loads(line) for line in context.store.get(job.manifest_key).decode().splitlines()]
    assert [(row["index"], row["status"], row["redraws"]) for row in manifest] == [
        (index, status.value, redraws) for index, status, _, redraws, _ in outcome
    ]
    assert all(row["score"] is not None for row in manifest)


def test_a_redrawn_image_carries_its_redraw_and_verifies_bit_for_bit(
    context: ChunkContext, model: ModelVersion
) -> None:
    # Given a gated job where some images were redrawn
    job_id = _run(
        context,
        model,
        {"model": "tiny", "items": [{"category": "a", "count": 24}], "seed": 42, "quality_gate": HIGH_GATE},
    )
    redrawn = [row for row in _outcome(context, job_id) if row[1] is ImageStatus.SUCCEEDED and row[3] > 0]
    assert redrawn
    index, _, _, redraws, key = redrawn[0]
    assert key is not None
    data = context.store.get(key)
    # When its provenance is read and the file regenerated from the registry
    claimed = read_provenance(data)
    report = verify_file(
        data,
        regenerate=True,
        session_factory=context.session_factory,
        generators=GeneratorCache(context.store, device="cpu"),
    )
    # Then the file names its redraw, and the sub-seed (seed, index, redraw) reproduces it exactly
    assert (claimed.provenance.index, claimed.provenance.redraw) == (index, redraws)
    assert report.matches is True


def test_a_gate_outside_its_bounds_is_refused_at_planning() -> None:
    # Given gates with a confidence above 1 and too many redraws
    # When they are parsed
    # Then planning refuses each, naming the field
    from db.errors import PlanningError

    for gate, field in (
        ({"min_confidence": 1.5}, "min_confidence"),
        ({"min_confidence": 0.5, "max_redraws": 99}, "max_redraws"),
    ):
        with pytest.raises(PlanningError, match=f"quality_gate.{field}"):
            parse_job_spec({"items": [{"category": "a", "count": 1}], "quality_gate": gate})


def test_a_gated_tar_job_shards_only_the_accepted_images(context: ChunkContext, model: ModelVersion) -> None:
    # Given a gated 30-image tar job (shards of 16)
    job_id = _run(
        context,
        model,
        {
            "model": "tiny",
            "items": [{"category": "a", "count": 30}],
            "seed": 42,
            "chunk_size": 16,
            "output_format": "tar",
            "quality_gate": HIGH_GATE,
        },
    )
    # When its shards are read
    job = job_row(context.session_factory, job_id)
    prefix = f"{job.tenant_id}/jobs/{job_id}/shards/"
    members = [
        name
        for info in context.store.list(prefix)
        if info.key.endswith(".tar")
        for name, _ in read_shard(context.store.get(info.key))
    ]
    # Then they hold one PNG + JSON pair per accepted image, none for the rejected ones
    accepted = [row[0] for row in _outcome(context, job_id) if row[1] is ImageStatus.SUCCEEDED]
    assert job.images_rejected > 0 and job.images_done == len(accepted)
    assert sorted(name for name in members if name.endswith(".png")) == [f"{i:08d}.png" for i in accepted]
    assert len(members) == 2 * len(accepted)


def test_every_delivered_file_of_a_job_with_redraws_verifies(
    context: ChunkContext, model: ModelVersion
) -> None:
    # Given a gated job whose redraws re-render only the failing images (batches of varying size)
    job_id = _run(
        context,
        model,
        {"model": "tiny", "items": [{"category": "a", "count": 40}], "seed": 7, "quality_gate": HIGH_GATE},
    )
    delivered = [row for row in _outcome(context, job_id) if row[4] is not None]
    assert any(row[3] > 0 for row in delivered), "no image was redrawn: the test proves nothing"
    generators = GeneratorCache(context.store, device="cpu")
    # When every delivered file is regenerated alone through the verify path
    failed = [
        row[0]
        for row in delivered
        if not verify_file(
            context.store.get(str(row[4])),
            regenerate=True,
            session_factory=context.session_factory,
            generators=generators,
        ).matches
    ]
    # Then each one matches bit for bit
    assert failed == []


def test_the_batched_device_scorer_agrees_with_the_reference_path_on_cpu_tensors() -> None:
    # Given 48 images of the shipped generator and an index whose training set holds the first 16 of them
    import numpy as np
    import torch

    from models.evaluator import default_evaluator, embed
    from models.inference import load_generator
    from models.memorization_index import MemorizationIndex
    from workers.pixels import render_pixels
    from workers.quality_gate import EvaluatorScorer

    shipped = Path(__file__).resolve().parents[2] / "models" / "weights" / "fashion-cgan" / "generator.pt"
    pixels = render_pixels(load_generator(shipped.read_bytes()), 5, 2, range(48))  # (48, 32, 32, 1)
    features, logits = embed(default_evaluator(), pixels)  # the reference path: numpy, float64 out
    index = MemorizationIndex(features[:16].astype(np.float32), threshold=1.0, quantile=0.001)
    # When the gate's scorer runs on the device path (torch, fixed blocks, cached norms) with CPU tensors
    scorer = EvaluatorScorer(index, device="cpu")
    scores = scorer(torch.from_numpy(pixels), 2)
    # Then near copies are exactly the reference decisions (the 16 indexed images, none of the others)
    assert scores.near_copy.tolist() == index.near_copies(features).tolist() == [True] * 16 + [False] * 32
    # And the confidence is the reference softmax to float32 precision
    reference = torch.softmax(torch.from_numpy(logits), dim=1)[:, 2].numpy()
    np.testing.assert_allclose(scores.confidence, reference, atol=1e-6)
    # And an image scored alone gets the score and decision it got inside the batch (to float32 precision:
    # the evaluator's float arithmetic is not bit-exact across block contents; the gate's decisions of one
    # job are, since a rerun scores the same blocks)
    alone = [scorer(pixels[row : row + 1], 2) for row in (0, 17, 47)]
    np.testing.assert_allclose([a.confidence[0] for a in alone], scores.confidence[[0, 17, 47]], atol=1e-6)
    assert [bool(a.near_copy[0]) for a in alone] == [True, False, False]


def test_the_evaluator_on_onnxruntime_scores_as_eager_does_and_the_same_every_time() -> None:
    # Given 48 images of the shipped generator and an index whose training set holds the first 16 of them
    import numpy as np
    import torch

    from models.evaluator import default_evaluator, embed
    from models.inference import load_generator
    from models.memorization_index import MemorizationIndex
    from workers.pixels import render_pixels
    from workers.quality_gate import EvaluatorScorer

    shipped = Path(__file__).resolve().parents[2] / "models" / "weights" / "fashion-cgan" / "generator.pt"
    pixels = render_pixels(load_generator(shipped.read_bytes()), 5, 2, range(48))  # (48, 32, 32, 1)
    features, _ = embed(default_evaluator(), pixels)
    index = MemorizationIndex(features[:16].astype(np.float32), threshold=1.0, quantile=0.001)
    # When eager and two ONNX Runtime scorers score them
    eager = EvaluatorScorer(index, device="cpu")(pixels, 2)
    first, second = (EvaluatorScorer(index, device="cpu", backend="onnxruntime")(pixels, 2) for _ in range(2))
    # Then ONNX Runtime makes eager's near-copy decisions with eager's confidence to float32 precision (its
    # fused conv + batch norm rounds apart by about 1e-6)
    assert first.near_copy.tolist() == eager.near_copy.tolist() == [True] * 16 + [False] * 32
    np.testing.assert_allclose(first.confidence, eager.confidence, atol=1e-5)
    # And two sessions give bit-identical scores (the gate's decisions of a job do not move between runs)
    assert first.confidence.tobytes() == second.confidence.tobytes()
    # And a backend that cannot run the evaluator is refused naming it
    with pytest.raises(ValueError, match="evaluator backend 'tensorrt'"):
        EvaluatorScorer(None, device="cpu", backend="tensorrt")
    if torch.cuda.is_available():  # pragma: no cover - CPU CI
        with pytest.raises(ValueError, match="onnxruntime: only on cpu"):
            EvaluatorScorer(None, device="cuda", backend="onnxruntime")


def test_an_onnxruntime_worker_gates_with_the_evaluator_on_onnxruntime(
    session_factory: sessionmaker[Session], local_store: ObjectStore, model: ModelVersion
) -> None:
    # Given a worker whose generators run on onnxruntime (a CPU worker's default)
    with ThreadPoolExecutor(max_workers=2) as pool:
        ctx = _context(session_factory, local_store, pool, backend="onnxruntime")
        # When the same gated job runs twice
        first, second = _run(ctx, model, REDRAWING_JOB), _run(ctx, model, REDRAWING_JOB)
    # Then its gate scored on onnxruntime: one scorer, keyed and built for that backend
    assert [(key[2], scorer.backend) for key, scorer in ctx.scorers.items()] == [  # type: ignore[attr-defined]
        ("onnxruntime", "onnxruntime")
    ]
    # And both runs made the same decisions with the same scores, some of them redraws and rejections
    outcome = _outcome(ctx, first)
    assert [row[:4] for row in _outcome(ctx, second)] == [row[:4] for row in outcome]
    assert {row[3] for row in outcome} >= {0, 1} and any(row[1] is ImageStatus.REJECTED for row in outcome)


@pytest.mark.parametrize(
    ("control", "renders", "redraws"),
    [
        (None, 2, 2),
        ({"variation": {"source": {}, "strength": 0.5}}, 2, 2),
        ({"interpolation": {"start": {}, "end": {}, "frames": 4}}, 0, 0),
    ],
)
def test_a_frame_is_scored_once_since_a_redraw_renders_the_same_frame(
    monkeypatch: pytest.MonkeyPatch, control: dict[str, Any] | None, renders: int, redraws: int
) -> None:
    """Given a gate with 2 redraws and a scorer no image passes / When a plain, a variation and an interpolation
    batch are gated / Then plain images and variations are redrawn twice before they are rejected, and
    interpolation frames (whose pixels do not depend on the redraw) are rejected after one scoring, with no
    render at all."""
    import numpy as np

    from workers import quality_gate
    from workers.quality_gate import GateSettings, Scores, apply_gate

    rendered: list[list[int]] = []
    scored: list[int] = []

    def render(generator: object, seed: int, class_index: int, indices: list[int], **_: object) -> Any:
        rendered.append(indices)
        return np.zeros((len(indices), 4, 4, 1), dtype=np.uint8)

    def never_passes(pixels: Any, class_index: int) -> Scores:
        scored.append(len(pixels))
        return Scores(np.zeros(len(pixels)), np.zeros(len(pixels), dtype=bool))

    monkeypatch.setattr(quality_gate, "render_pixels", render)
    gated = apply_gate(
        object(), never_passes, GateSettings(0.5, 2), seed=1, class_index=0, indices=[0, 1, 2],
        pixels=np.zeros((3, 4, 4, 1), dtype=np.uint8), control=control,
    )  # fmt: skip
    assert len(rendered) == renders and len(scored) == 1 + renders
    assert [(image.pixels is None, image.redraws) for image in gated] == [(True, redraws)] * 3


def test_an_interpolation_job_is_charged_no_redraws() -> None:
    """Given a quality gate of 3 redraws / Then a variation job is charged each image 4 times and an
    interpolation job each frame once (its frames are never redrawn)."""
    gate = {"min_confidence": 0.5, "max_redraws": 3}
    source = {"job_id": "j" * 32, "index": 0}
    variation = parse_job_spec(
        {"variation": {"source": source, "strength": 0.3, "count": 5}, "quality_gate": gate}
    )
    frames = parse_job_spec(
        {"interpolation": {"start": source, "end": {**source, "index": 1}, "frames": 5}, "quality_gate": gate}
    )
    assert (variation.quota_cost, frames.quota_cost) == (20, 5)
