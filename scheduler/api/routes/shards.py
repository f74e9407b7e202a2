"""`/v1/jobs/{id}/shards`: a finished tar job's shard index with a presigned URL per shard.

The workers write `<tenant>/jobs/<job>/shards/index.json` when a tar job finishes (`workers.shards`); its shard
`url`s are store URIs (`s3://...`) that a client cannot fetch. This route serves the same document with each
shard's `url` replaced by a presigned GET URL (the URI stays as `uri`), so an ETL host can stream the shards.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field

from db.errors import ObjectNotFoundError
from db.jobs import get_job
from db.storage.keys import validate_key
from scheduler.api.deps import ServicesDep, TenantDep
from scheduler.api.problems import COMMON_ERRORS, problem_doc
from scheduler.api.routes.images import tenant_owns_key
from scheduler.errors import JobStateError

router = APIRouter(prefix="/v1", tags=["images"])


class ShardPublic(BaseModel):
    """One WebDataset shard of a tar job."""

    key: str
    uri: str = Field(description="The shard in the object store (not fetchable by clients).")
    url: str = Field(description="Presigned GET URL of the shard.")
    url_expires_at: dt.datetime
    first_index: int
    last_index: int
    images: int
    size_bytes: int | None = None


class ShardIndexPublic(BaseModel):
    """A tar job's shards in index order; members are `<index:08d>.png` and `<index:08d>.json`."""

    format: str = "webdataset"
    member_extensions: list[str]
    images: int
    shards: list[ShardPublic]


def shard_index_key(tenant_id: str, job_id: str) -> str:
    """`<tenant>/jobs/<job>/shards/index.json`: where the workers write a tar job's index (workers.shards)."""
    return validate_key(f"{tenant_id}/jobs/{job_id}/shards/index.json")


@router.get(
    "/jobs/{job_id}/shards",
    response_model=ShardIndexPublic,
    summary="Get a finished tar job's shard index with presigned shard URLs",
    responses={
        **COMMON_ERRORS,
        409: problem_doc("The job is not a tar job, or it has not finished yet: no shard index."),
    },
)
async def get_shard_index(job_id: str, services: ServicesDep, tenant: TenantDep) -> ShardIndexPublic:
    """The shard index of a finished `output_format: tar` job, each shard with a fresh presigned URL."""

    def read() -> ShardIndexPublic:
        with services.read_sessions() as session:
            job = get_job(session, job_id, tenant_id=tenant.id)
        if job.output_format != "tar":
            raise JobStateError(
                f"job {job_id} writes {job.output_format} images, not tar shards: no shard index"
            )
        if not job.status.is_terminal:
            raise JobStateError(
                f"job {job_id} is {job.status.value}; its shard index is written when it finishes"
            )
        try:
            document: dict[str, Any] = json.loads(services.store.get(shard_index_key(tenant.id, job.id)))
        except ObjectNotFoundError as exc:
            raise JobStateError(f"job {job_id} has no shard index (no image was delivered)") from exc
        shards = []
        for shard in document.get("shards", []):
            key = str(shard["key"])
            if not tenant_owns_key(tenant.id, key):  # pragma: no cover - the workers write tenant keys
                raise JobStateError("shard outside the tenant's prefix")
            presigned = services.store.presign(key, expires_in_seconds=services.presign_ttl_seconds)
            shards.append(
                ShardPublic(
                    key=key,
                    uri=str(shard.get("url") or services.store.uri(key)),
                    url=presigned.url,
                    url_expires_at=presigned.expires_at,
                    first_index=int(shard["first_index"]),
                    last_index=int(shard["last_index"]),
                    images=int(shard["images"]),
                    size_bytes=shard.get("size_bytes"),
                )
            )
        return ShardIndexPublic(
            format=str(document.get("format", "webdataset")),
            member_extensions=list(document.get("member_extensions", ["png", "json"])),
            images=int(document.get("images", sum(s.images for s in shards))),
            shards=shards,
        )

    return await run_in_threadpool(read)
