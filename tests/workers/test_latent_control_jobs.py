"""Truncation, variation and interpolation jobs through the worker: deterministic bytes, provenance that
`verify --regenerate` recomputes bit for bit, and ψ = 1.0 / strength 0 that change nothing."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import shutil
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image as PILImage
from sqlalchemy import select
from sqlalchemy.engine import Engine

from db.cli_support import ExitCode
from db.engine import make_engine, make_session_factory, transaction
from db.model_versions import get_model_version
from db.pipeline_settings import WorkerSettings
from db.planning import parse_job_spec, submit_job
from db.status import DeliveryStatus, JobStatus
from db.storage import LocalStore
from db.tables import Image, Job, Tenant, WebhookDelivery
from models.inference import InferenceSpec
from scheduler.cli.root import cli
from scheduler.settings import WebhookSettings
from scheduler.signatures import new_secret
from scheduler.webhooks import dispatch_due
from tests.pipeline import make_model_version, make_tenant, tiny_checkpoint
from tests.scheduler.receivers import Receiver
from workers.chunk_generation import ChunkContext, ChunkOutcome, generate_chunk
from workers.encoding import encode_image
from workers.finalize import finalize_job
from workers.generator_cache import GeneratorCache
from workers.pixels import render_pixels
from workers.verification import read_provenance, verify_file

SOURCE_JOB = "5" * 32  # fixed job ids: a file's bytes carry its job id, so two worlds can agree on bytes


@dataclass
class World:
    """A database, an object store and an in-process worker with the tiny model registered."""

    url: str
    store: LocalStore
    engine: Engine
    context: ChunkContext
    tenant_id: str

    def run(self, spec: dict[str, object], job_id: str | None = None) -> tuple[str, dict[int, bytes]]:
        """Submit a job, run its chunks in-process; return its id and its files by index."""
        session_factory = self.context.session_factory
        planned = submit_job(
            session_factory,
            parse_job_spec({"model": "tiny", "chunk_size": 4, **spec}),
            tenant_id=self.tenant_id,
            publisher=_publish_nothing,
            job_id=job_id,
        )
        outcomes = [generate_chunk(self.context, chunk_id) for chunk_id in planned.chunk_ids]
        assert outcomes == [ChunkOutcome.SUCCEEDED] * len(outcomes)
        with session_factory() as session:
            rows = session.scalars(select(Image).where(Image.job_id == planned.job_id)).all()
            return planned.job_id, {row.index: self.store.get(row.key) for row in rows if row.key}

    def verify(self, data: bytes) -> bool | None:
        """`verify_file(..., regenerate=True)` against this world's registry."""
        generators = GeneratorCache(self.store, device="cpu")
        report = verify_file(
            data, regenerate=True, session_factory=self.context.session_factory, generators=generators
        )
        return report.matches


def _publish_nothing(queue: str, chunk_ids: Sequence[int]) -> None:
    """Chunks run in-process here: nothing goes to a broker."""


@pytest.fixture
def make_world(sqlite_url: str, tmp_path: Path) -> Iterator[Callable[[str], World]]:
    """Build independent worlds (each its own SQLite copy and folder), closed after the test."""
    opened: list[World] = []

    def build(name: str) -> World:
        path = tmp_path / f"{name}.db"
        shutil.copyfile(sqlite_url.removeprefix("sqlite:///"), path)
        url = f"sqlite:///{path}"
        engine = make_engine(url)
        session_factory = make_session_factory(engine)
        store = LocalStore(tmp_path / f"{name}-store")
        context = ChunkContext(
            session_factory=session_factory,
            store=store,
            generators=GeneratorCache(store, device="cpu"),
            settings=WorkerSettings(batch_size=4, upload_threads=2),
            worker_name=f"worker-{name}",
            pool=ThreadPoolExecutor(max_workers=2),
            # As the worker does (workers.context): the last chunk finalizes the job (manifests, status, webhook).
            on_job_finished=lambda job_id: finalize_job(session_factory, store, job_id),
        )
        make_model_version(session_factory, checkpoint=tiny_checkpoint(seed=3), store=store)
        world = World(url, store, engine, context, make_tenant(session_factory))
        opened.append(world)
        return world

    yield build
    for world in opened:
        world.context.pool.shutdown(wait=True)
        world.engine.dispose()


def _pixels(data: bytes) -> np.ndarray:
    return np.asarray(PILImage.open(io.BytesIO(data)))


def _one_pixel_changed(data: bytes) -> bytes:
    """The same file with one pixel brightened, re-encoded with the file's own provenance."""
    claimed = read_provenance(data)
    pixels = _pixels(data)[:, :, None].copy()  # (H, W, 1)
    pixels[2, 3, 0] = (int(pixels[2, 3, 0]) + 1) % 256
    return encode_image(pixels, claimed.output_format, claimed.provenance)


def test_psi_one_gives_todays_bytes(make_world: Callable[[str], World]) -> None:
    """Given two fresh worlds / When one runs a job without ψ and the other the same job with ψ = 1.0 /
    Then every file is byte-identical and carries no control field."""
    plain = make_world("plain").run({"items": [{"category": "a", "count": 6}], "seed": 21}, SOURCE_JOB)[1]
    spec = {"items": [{"category": "a", "count": 6}], "seed": 21, "truncation": 1.0}
    with_psi = make_world("psi").run(spec, SOURCE_JOB)[1]
    assert plain == with_psi and len(plain) == 6
    assert all(read_provenance(data).provenance.control == () for data in plain.values())


def test_control_jobs_are_deterministic_verifiable_and_tamper_evident(
    make_world: Callable[[str], World],
) -> None:
    """Given a ψ 0.6 source job in two fresh worlds / When each runs the same variation and interpolation
    jobs / Then the files are byte-identical across worlds, each kind regenerates bit for bit, a one-pixel
    change fails, a strength-0 variation shows the source's pixels, and the interpolation's end frames are
    its endpoints."""
    results = []
    for name in ("first", "second"):
        world = make_world(name)
        _, sources = world.run(
            {"items": [{"category": "b", "count": 4}], "seed": 8, "truncation": 0.6}, SOURCE_JOB
        )
        source = {"job_id": SOURCE_JOB, "index": 2}
        variation = world.run(
            {"variation": {"source": source, "strength": 0.3, "count": 5}, "seed": 1}, "6" * 32
        )[1]
        identical = world.run(
            {"variation": {"source": source, "strength": 0.0, "count": 2}, "seed": 2}, "7" * 32
        )[1]
        frames = world.run(
            {
                "interpolation": {"start": source, "end": {"job_id": SOURCE_JOB, "index": 3}, "frames": 5},
                "seed": 3,
            },
            "8" * 32,
        )[1]
        results.append((world, sources, variation, identical, frames))
    (world, sources, variation, identical, frames), other = results[0], results[1]
    assert (sources, variation, identical, frames) == other[1:]

    for files in (sources, variation, frames):
        assert all(world.verify(data) is True for data in files.values())
        assert world.verify(_one_pixel_changed(files[1])) is False
    assert all(np.array_equal(_pixels(data), _pixels(sources[2])) for data in identical.values())
    assert np.array_equal(_pixels(frames[0]), _pixels(sources[2]))
    assert np.array_equal(_pixels(frames[4]), _pixels(sources[3]))
    assert not np.array_equal(_pixels(frames[2]), _pixels(frames[0]))
    assert len({_pixels(data).tobytes() for data in variation.values()}) == 5

    stated = read_provenance(variation[0]).provenance
    fields = dict(stated.control)
    assert (fields["variation_of"], fields["strength"], fields["truncation"]) == (
        f"{SOURCE_JOB}/2",
        "0.3",
        "0.6",
    )
    assert dict(read_provenance(frames[3]).provenance.control)["frame"] == "3/4"


def test_verify_cli_regenerates_a_variation_and_refuses_an_edited_recipe(
    make_world: Callable[[str], World], tmp_path: Path
) -> None:
    """Given a variation file / When `catalogan verify --regenerate` reads it, then a copy whose recipe says
    another strength / Then the first matches (exit 0) and the edited one does not (exit NOT_VERIFIED)."""
    world = make_world("cli")
    world.run({"items": [{"category": "c", "count": 2}], "seed": 4}, SOURCE_JOB)
    _, files = world.run(
        {"variation": {"source": {"job_id": SOURCE_JOB, "index": 1}, "strength": 0.5, "count": 2}}
    )
    env = {
        "CATALOGAN_DATABASE_URL": world.url,
        "CATALOGAN_STORAGE_URL": world.store.url,
        "CATALOGAN_DEVICE": "cpu",
    }
    good = tmp_path / "good.png"
    good.write_bytes(files[0])
    result = CliRunner().invoke(cli, ["verify", str(good), "--regenerate"], env=env, prog_name="catalogan")
    assert result.exit_code == 0, result.output
    assert "matches bit for bit" in result.output
    edited = tmp_path / "edited.png"
    claimed = read_provenance(files[0])
    forged = tuple(
        (name, value.replace('"strength":0.5', '"strength":0.6') if name == "latent_control" else value)
        for name, value in claimed.provenance.control
    )
    provenance = dataclasses.replace(claimed.provenance, control=forged)
    edited.write_bytes(encode_image(_pixels(files[0])[:, :, None], "png", provenance))
    result = CliRunner().invoke(cli, ["verify", str(edited), "--regenerate"], env=env, prog_name="catalogan")
    assert result.exit_code == ExitCode.NOT_VERIFIED, result.output
    assert "NOT matching" in result.output


def _manifest(world: World, job_id: str) -> tuple[Job, list[dict[str, object]]]:
    """The job row and its JSONL manifest's records, as the finalize step wrote them to the store."""
    with world.context.session_factory() as session:
        job = session.get_one(Job, job_id)
        session.expunge(job)
    assert job.manifest_key is not None
    lines = world.store.get(job.manifest_key).decode().splitlines()
    return job, [json.loads(line) for line in lines]


def test_control_jobs_list_every_image_in_their_manifest_and_send_their_webhook(
    make_world: Callable[[str], World],
) -> None:
    """Given a delivered job and a webhook receiver / When a variation job and an interpolation job of its images
    run to the end / Then each succeeded with a manifest listing every image (index, key, sha256 of its file,
    seed, model version), each listed file carries its recipe (source and strength; its frame of the path),
    and each job's `job.completed` webhook is delivered, signed, like any job's."""
    world = make_world("hooks")
    secret = new_secret()
    with transaction(world.context.session_factory) as session:
        session.get_one(Tenant, world.tenant_id).webhook_secret = secret
    receiver = Receiver().start()
    try:
        world.run({"items": [{"category": "b", "count": 4}], "seed": 8}, SOURCE_JOB)
        source = {"job_id": SOURCE_JOB, "index": 2}
        kinds = {
            "variation": {"variation": {"source": source, "strength": 0.3, "count": 5}, "seed": 1},
            "interpolation": {
                "interpolation": {"start": source, "end": {"job_id": SOURCE_JOB, "index": 3}, "frames": 6},
                "seed": 2,
            },
        }
        jobs = {
            kind: world.run({**spec, "webhook_url": receiver.url}, job_id)
            for (kind, spec), job_id in zip(kinds.items(), ("6" * 32, "8" * 32), strict=True)
        }
        report = dispatch_due(
            world.context.session_factory, WebhookSettings(webhook_allow_private_targets=True)
        )
        for kind, (job_id, files) in jobs.items():
            job, rows = _manifest(world, job_id)
            total = 5 if kind == "variation" else 6
            assert job.status is JobStatus.SUCCEEDED and job.images_done == total
            assert [row["index"] for row in rows] == list(range(total))
            for row in rows:
                data = files[int(row["index"])]  # type: ignore[call-overload]
                assert row["status"] == "succeeded" and row["category"] == "b"
                assert (row["seed"], row["model_version"]) == (job.seed, "tiny@1")
                assert (
                    row["sha256"]
                    == hashlib.sha256(data).hexdigest()
                    == hashlib.sha256(world.store.get(str(row["key"]))).hexdigest()
                )
                fields = dict(read_provenance(data).provenance.control)
                if kind == "variation":
                    assert (fields["variation_of"], fields["strength"]) == (f"{SOURCE_JOB}/2", "0.3")
                else:
                    assert fields["interpolation"] == f"{SOURCE_JOB}/2..{SOURCE_JOB}/3"
                    assert fields["frame"] == f"{row['index']}/5"
                assert json.loads(fields["latent_control"]) == job.options["latent_control"]
    finally:
        receiver.stop()
    assert (report.delivered, report.failed) == (2, 0)
    bodies = {json.loads(delivery.body)["data"]["job_id"]: delivery for delivery in receiver.deliveries}
    assert set(bodies) == {job_id for job_id, _ in jobs.values()}
    for job_id, delivery in bodies.items():
        body = json.loads(delivery.body)
        assert body["type"] == "job.completed" and body["data"]["status"] == "succeeded"
        assert body["data"]["images_done"] == (5 if job_id == "6" * 32 else 6)
        assert "webhook-signature" in delivery.headers
    with world.context.session_factory() as session:
        statuses = session.scalars(select(WebhookDelivery.status)).all()
    assert statuses == [DeliveryStatus.DELIVERED] * 2


def _forged_frame(world: World, real: bytes, index: int) -> bytes:
    """A hand-made file claiming to be image `index` of the interpolation job that made `real`: the pixels the
    recipe gives at t = index / (frames - 1), encoded with `real`'s provenance and that index and frame."""
    claimed = read_provenance(real).provenance
    control = dict(claimed.control)
    recipe = json.loads(control["latent_control"])
    last = int(recipe["interpolation"]["frames"]) - 1
    with world.context.session_factory() as session:
        model_version = get_model_version(session, "tiny", 1)
        session.expunge(model_version)
    spec = InferenceSpec.from_fields(dict(claimed.inference))
    generator = GeneratorCache(world.store, device="cpu").get(model_version, spec)
    class_index = [str(category) for category in model_version.categories].index(claimed.category)
    pixels = render_pixels(generator, claimed.seed, class_index, [index], redraws=[0], control=recipe)[0]
    forged = tuple((name, f"{index}/{last}" if name == "frame" else value) for name, value in claimed.control)
    return encode_image(pixels, "png", dataclasses.replace(claimed, index=index, control=forged))


def test_a_file_claiming_a_frame_beyond_its_interpolation_does_not_verify(
    make_world: Callable[[str], World],
) -> None:
    """Given a 5-frame interpolation, and hand-made files made the way its frames are made (the recipe's
    pixels at t = index / 4, the file's provenance with that index) / When the one claiming frame 2 and the one
    claiming frame 9 are verified with --regenerate / Then frame 2 is byte for byte the job's own file and
    verifies, and frame 9 (t = 9/4, off the path: an image no job could have made) is refused, never reported
    as matching."""
    world = make_world("frames")
    world.run({"items": [{"category": "b", "count": 4}], "seed": 8}, SOURCE_JOB)
    ends = {"start": {"job_id": SOURCE_JOB, "index": 0}, "end": {"job_id": SOURCE_JOB, "index": 1}}
    _, frames = world.run({"interpolation": {**ends, "frames": 5}, "seed": 3}, "8" * 32)
    assert _forged_frame(world, frames[4], 2) == frames[2]
    assert world.verify(frames[2]) is True
    forged = _forged_frame(world, frames[4], 9)
    with pytest.raises(ValueError, match="not a frame of an interpolation of 5 frames"):
        world.verify(forged)
