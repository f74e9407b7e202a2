"""`output_format: tar`: WebDataset shards hold exactly the requested images, byte-identical to a png job."""

from __future__ import annotations

import json
import random
from collections import defaultdict
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from db import migrate
from db.engine import make_engine, make_session_factory
from db.pipeline_settings import WorkerSettings
from db.planning import parse_job_spec, submit_job
from db.status import JobStatus
from db.storage import LocalStore, open_store
from db.tables import Image, ModelVersion
from tests.pipeline import job_row, make_model_version, make_tenant, tiny_checkpoint
from workers.chunk_generation import ChunkContext, ChunkOutcome, generate_chunk
from workers.export import export_job
from workers.finalize import finalize_job
from workers.generator_cache import GeneratorCache
from workers.shards import ShardMember, build_shard, index_key, read_shard

JOB_ID = "5" * 32  # both jobs share it: the job id is part of every file's provenance
SPEC: dict[str, Any] = {
    "model": "tiny",
    "items": [{"category": "a", "count": 10}, {"category": "c", "count": 7, "sku": "SKU-3"}],
    "seed": 99,
    "chunk_size": 8,
}


@dataclass
class Installation:
    """A database and an object folder of their own, with the tiny model registered."""

    context: ChunkContext
    store: LocalStore


def _install(folder: Path) -> Iterator[Installation]:
    url = f"sqlite:///{folder / 'catalogan.db'}"
    folder.mkdir(parents=True)
    migrate.upgrade(url)
    engine = make_engine(url)
    session_factory = make_session_factory(engine)
    store = open_store((folder / "objects").as_uri())
    assert isinstance(store, LocalStore)
    make_model_version(session_factory, checkpoint=tiny_checkpoint(seed=5), store=store)
    pool = ThreadPoolExecutor(max_workers=2)
    context = ChunkContext(
        session_factory=session_factory,
        store=store,
        generators=GeneratorCache(store, device="cpu"),
        settings=WorkerSettings(batch_size=3, upload_threads=2),
        worker_name="test-worker",
        pool=pool,
        on_job_finished=lambda job_id: finalize_job(session_factory, store, job_id),
    )
    yield Installation(context, store)
    pool.shutdown(wait=True)
    engine.dispose()


def _publish_nothing(queue: str, chunk_ids: Sequence[int]) -> None:
    """Chunks run in-process in these tests."""


def _run_job(installation: Installation, output_format: str) -> str:
    ctx = installation.context
    with ctx.session_factory() as session:
        model = session.scalars(select(ModelVersion)).one()
    planned = submit_job(
        ctx.session_factory,
        parse_job_spec({**SPEC, "output_format": output_format}),
        tenant_id=make_tenant(ctx.session_factory),
        model_version=model,
        publisher=_publish_nothing,
        job_id=JOB_ID,
    )
    outcomes = [generate_chunk(ctx, chunk_id) for chunk_id in planned.chunk_ids]
    assert outcomes == [ChunkOutcome.SUCCEEDED] * len(planned.chunk_ids)
    return planned.job_id


@pytest.fixture
def png_install(tmp_path: Path) -> Iterator[Installation]:
    """A fresh installation for the png job."""
    yield from _install(tmp_path / "png")


@pytest.fixture
def tar_install(tmp_path: Path) -> Iterator[Installation]:
    """A fresh installation for the tar job."""
    yield from _install(tmp_path / "tar")


@pytest.fixture
def other_tar_install(tmp_path: Path) -> Iterator[Installation]:
    """Another fresh installation, to run the tar job a second time."""
    yield from _install(tmp_path / "tar-again")


def test_a_tar_jobs_shards_hold_exactly_the_png_jobs_bytes(
    png_install: Installation, tar_install: Installation, other_tar_install: Installation, tmp_path: Path
) -> None:
    # Given the same 17-image request (seed 99, job id fixed) run once as png and once as tar
    _run_job(png_install, "png")
    _run_job(tar_install, "tar")
    png_job, tar_job = (job_row(i.context.session_factory, JOB_ID) for i in (png_install, tar_install))
    assert png_job.status is tar_job.status is JobStatus.SUCCEEDED
    assert (tar_job.images_done, tar_job.chunks_total) == (17, 3)  # shards: [0, 8), [8, 10), [10, 17)
    with png_install.context.session_factory() as session:
        png_files = {
            int(row.index): png_install.store.get(str(row.key))
            for row in session.scalars(select(Image).where(Image.job_id == JOB_ID))
        }
    # When the tar job's shards are read as WebDataset samples
    prefix = f"{tar_job.tenant_id}/jobs/{JOB_ID}/shards/"
    shard_keys = sorted(info.key for info in tar_install.store.list(prefix) if info.key.endswith(".tar"))
    samples: dict[int, dict[str, bytes]] = defaultdict(dict)
    for key in shard_keys:
        for name, data in read_shard(tar_install.store.get(key)):
            stem, extension = name.split(".", 1)
            samples[int(stem)][extension] = data
    # Then they hold exactly the 17 requested images, each byte-identical to the png job's file
    assert shard_keys == [f"{prefix}{start:08d}.tar" for start in (0, 8, 10)]
    assert sorted(samples) == list(range(17))
    assert all(samples[index]["png"] == png_files[index] for index in range(17))
    meta = json.loads(samples[12]["json"])
    assert (meta["index"], meta["category"], meta["sku"], meta["seed"]) == (12, "c", "SKU-3", 99)
    # And the index lists every shard with its image range, and the manifest points each image at its shard
    index = json.loads(tar_install.store.get(index_key(tar_job.tenant_id, JOB_ID)))
    assert index["images"] == 17 and [shard["key"] for shard in index["shards"]] == shard_keys
    assert [(shard["first_index"], shard["last_index"], shard["images"]) for shard in index["shards"]] == [
        (0, 7, 8),
        (8, 9, 2),
        (10, 16, 7),
    ]
    assert tar_job.manifest_key is not None
    manifest = [
        json.loads(line) for line in tar_install.store.get(tar_job.manifest_key).decode().splitlines()
    ]
    assert [row["key"] for row in manifest][7:9] == [shard_keys[0], shard_keys[1]]
    # And the same tar job run elsewhere writes byte-identical shards (no times or owners in the headers)
    _run_job(other_tar_install, "tar")
    again = sorted(info.key for info in other_tar_install.store.list() if info.key.endswith(".tar"))
    assert [other_tar_install.store.get(key) for key in again] == [
        tar_install.store.get(key) for key in shard_keys
    ]
    # And an export copies each shard once, with the index
    with tar_install.context.session_factory() as session:
        exported = export_job(session, tar_install.store, tar_job, tmp_path / "export")
    exported_shard = (tmp_path / "export" / "shards" / "00000010.tar").read_bytes()
    assert exported.images == 17 and exported_shard == tar_install.store.get(shard_keys[2])
    assert (tmp_path / "export" / "shards" / "index.json").exists()


def _tarfile_shard(members: list[ShardMember]) -> bytes:
    """The reference: the same members written by Python's tarfile in USTAR format."""
    import io
    import json
    import tarfile

    from workers.shards import SHARD_MEMBER_MODE, member_name

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as archive:
        for member in sorted(members, key=lambda item: item.index):
            metadata = json.dumps(member.metadata, sort_keys=True, separators=(",", ":")).encode()
            for name, data in (
                (member_name(member.index), member.png),
                (member_name(member.index, "json"), metadata),
            ):
                info = tarfile.TarInfo(name)
                info.size, info.mtime, info.mode = len(data), 0, SHARD_MEMBER_MODE
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@pytest.mark.parametrize("count", [0, 1, 2, 9, 250])
def test_shard_bytes_equal_pythons_tarfile_ustar_output(count: int) -> None:
    # Given members of many sizes (empty, exactly one block, odd sizes) in shuffled order
    rng = random.Random(count)
    sizes = [0, 511, 512, 513, 1024, 3001]
    members = [
        ShardMember(
            index * 7 + 3, rng.randbytes(sizes[index % len(sizes)]), {"index": index * 7 + 3, "sku": None}
        )
        for index in range(count)
    ]
    rng.shuffle(members)
    # When catalogan builds the shard
    shard = build_shard(members)
    # Then it is byte for byte what tarfile writes, and tarfile reads every member back
    assert shard == _tarfile_shard(members)
    assert len(shard) % (20 * 512) == 0
    names = [name for name, _ in read_shard(shard)]
    assert names == [
        n
        for m in sorted(members, key=lambda m: m.index)
        for n in (f"{m.index:08d}.png", f"{m.index:08d}.json")
    ]
