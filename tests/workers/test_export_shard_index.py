"""The exported `shards/index.json` of a tar job points at the exported shards, whatever the data folder."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from db.engine import transaction
from db.planning import parse_job_spec, submit_job
from db.tables import Job, ModelVersion
from tests.workers.test_shards import JOB_ID, SPEC, Installation, _install, _publish_nothing
from workers.chunk_generation import ChunkOutcome, generate_chunk
from workers.export import export_job
from workers.generate_command import ensure_local_tenant


@pytest.fixture
def two_installs(tmp_path: Path) -> Iterator[tuple[Installation, Installation]]:
    """Two fresh installations in different data folders, each with the tiny model registered."""
    first, second = _install(tmp_path / "data-one"), _install(tmp_path / "data-two")
    yield next(first), next(second)
    for installation in (first, second):
        next(installation, None)  # shut its pool down, dispose of its engine


def _run_local_tar_job(installation: Installation) -> None:
    """The tar job of `SPEC`, run in-process for the local tenant, as `catalogan generate` submits it (the
    tenant and the job id are parts of every key, so two data folders give the same keys)."""
    ctx = installation.context
    with transaction(ctx.session_factory) as session:
        tenant_id = ensure_local_tenant(session)
        model = session.scalars(select(ModelVersion)).one()
    planned = submit_job(
        ctx.session_factory,
        parse_job_spec({**SPEC, "output_format": "tar"}),
        tenant_id=tenant_id,
        model_version=model,
        publisher=_publish_nothing,
        job_id=JOB_ID,
    )
    assert [generate_chunk(ctx, chunk_id) for chunk_id in planned.chunk_ids] == [ChunkOutcome.SUCCEEDED] * 3


def test_a_tar_jobs_exported_index_is_the_same_from_any_data_folder_and_points_inside_out(
    two_installs: tuple[Installation, Installation], tmp_path: Path
) -> None:
    """Given the same tar job run in two data folders / When each is exported / Then both `shards/index.json`
    files are byte-identical, and each shard's url is its path inside --out (`shards/00000000.tar`), a file
    holding that shard's bytes; the other fields are the stored index's (it held `file:///<data folder>/...`)."""
    outs = []
    for number, installation in enumerate(two_installs):
        _run_local_tar_job(installation)
        factory = installation.context.session_factory
        with factory() as session:
            job = session.get_one(Job, JOB_ID)
            out = tmp_path / f"out-{number}"
            export_job(session, installation.store, job, out)
        outs.append(out)
    indexes = [(out / "shards" / "index.json").read_bytes() for out in outs]
    assert indexes[0] == indexes[1]
    document = json.loads(indexes[0])
    stored = json.loads(two_installs[0].store.get(f"{job.tenant_id}/jobs/{JOB_ID}/shards/index.json"))
    assert [shard["url"] for shard in document["shards"]] == [
        f"shards/{start:08d}.tar" for start in (0, 8, 10)
    ]
    for shard, stored_shard in zip(document["shards"], stored["shards"], strict=True):
        assert (outs[0] / shard["url"]).read_bytes() == two_installs[0].store.get(shard["key"])
        assert {**shard, "url": stored_shard["url"]} == stored_shard
    assert {key: value for key, value in document.items() if key != "shards"} == {
        key: value for key, value in stored.items() if key != "shards"
    }
