"""Truncation, variation and interpolation jobs through the worker: deterministic bytes, provenance that
`verify --regenerate` recomputes bit for bit, and ψ = 1.0 / strength 0 that change nothing."""

from __future__ import annotations

import dataclasses
import io
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
from db.engine import make_engine, make_session_factory
from db.pipeline_settings import WorkerSettings
from db.planning import parse_job_spec, submit_job
from db.storage import LocalStore
from db.tables import Image
from scheduler.cli.root import cli
from tests.pipeline import make_model_version, make_tenant, tiny_checkpoint
from workers.chunk_generation import ChunkContext, ChunkOutcome, generate_chunk
from workers.encoding import encode_image
from workers.generator_cache import GeneratorCache
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
