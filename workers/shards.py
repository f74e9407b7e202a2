"""Sharded output (`output_format: tar`): WebDataset-style tar shards, one per chunk, plus a JSON index per job.

A shard holds the images of one chunk (the chunk size is the shard size; 1,000 by default for tar jobs) as
members `<index:08d>.png` (exactly the PNG bytes a `png` job with the same job id would upload) and
`<index:08d>.json` (index, category, SKU, seed, model version, sha256 of the PNG). WebDataset groups members
by the name before the first dot, so each sample is `{"png": ..., "json": ...}`. Tar headers carry no
times, owners or modes that vary, so a rerun writes identical shard bytes to the same key.

Keys: `<tenant>/jobs/<job>/shards/<first index:08d>.tar` and `<tenant>/jobs/<job>/shards/index.json`.
"""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from db.status import ImageStatus
from db.storage import ObjectStore
from db.storage.keys import validate_key
from db.tables import Image, Job

SHARD_FORMAT = "tar"
SHARD_IMAGE_FORMAT = "png"  # the member format inside shards
SHARD_CONTENT_TYPE = "application/x-tar"
SHARD_MEMBER_MODE = 0o644
INDEX_NAME = "index.json"


@dataclass(frozen=True, slots=True)
class ShardMember:
    """One sample of a shard: an image's PNG bytes and its metadata."""

    index: int
    png: bytes
    metadata: dict[str, Any]


def shard_prefix(tenant_id: str, job_id: str) -> str:
    """`<tenant>/jobs/<job>/shards/`."""
    return f"{tenant_id}/jobs/{job_id}/shards/"


def shard_key(tenant_id: str, job_id: str, first_index: int) -> str:
    """The key of the shard whose first image is `first_index` (a chunk's start index)."""
    return validate_key(f"{shard_prefix(tenant_id, job_id)}{first_index:08d}.tar")


def index_key(tenant_id: str, job_id: str) -> str:
    """The key of a job's shard index."""
    return validate_key(shard_prefix(tenant_id, job_id) + INDEX_NAME)


def member_name(index: int, extension: str = SHARD_IMAGE_FORMAT) -> str:
    """The tar member name of an image (`<index:08d>.png`) or its metadata (`.json`)."""
    return f"{index:08d}.{extension}"


def _add(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0  # no clock in the bytes: a rerun writes the same shard
    info.mode = SHARD_MEMBER_MODE
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    archive.addfile(info, io.BytesIO(data))


def build_shard(members: Iterable[ShardMember]) -> bytes:
    """A deterministic USTAR archive of the members in index order (png then json per sample)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as archive:
        for member in sorted(members, key=lambda item: item.index):
            _add(archive, member_name(member.index), member.png)
            metadata = json.dumps(member.metadata, sort_keys=True, separators=(",", ":")).encode()
            _add(archive, member_name(member.index, "json"), metadata)
    return buffer.getvalue()


def read_shard(data: bytes) -> Iterator[tuple[str, bytes]]:
    """(member name, bytes) of every file in a shard, in archive order."""
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as archive:
        for info in archive:
            if info.isfile():
                extracted = archive.extractfile(info)
                assert extracted is not None
                yield info.name, extracted.read()


def read_member(data: bytes, index: int) -> bytes:
    """The PNG bytes of image `index` in a shard; `KeyError` when it is not there."""
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as archive:
        extracted = archive.extractfile(member_name(index))
        if extracted is None:
            raise KeyError(member_name(index))
        return extracted.read()


def write_shard_index(session: Session, store: ObjectStore, job: Job) -> str:
    """Write `shards/index.json` for a finished tar job from its image rows; returns its key.

    Document: `format` ("webdataset"), `member_extensions`, `images`, and `shards` in index order, each with
    `key`, `url` (the store URI), `first_index`, `last_index`, `images` and `size_bytes`.
    """
    rows = session.execute(
        select(Image.key, func.count(Image.id), func.min(Image.index), func.max(Image.index))
        .where(Image.job_id == job.id, Image.status == ImageStatus.SUCCEEDED, Image.key.is_not(None))
        .group_by(Image.key)
        .order_by(func.min(Image.index))
    ).all()
    sizes = {info.key: info.size_bytes for info in store.list(shard_prefix(job.tenant_id, job.id))}
    shards: list[dict[str, Any]] = [
        {
            "key": str(key),
            "url": store.uri(str(key)),
            "first_index": int(first),
            "last_index": int(last),
            "images": int(count),
            "size_bytes": sizes.get(str(key)),
        }
        for key, count, first, last in rows
    ]
    document = {
        "format": "webdataset",
        "member_extensions": [SHARD_IMAGE_FORMAT, "json"],
        "images": sum(int(shard["images"]) for shard in shards),
        "shards": shards,
    }
    key = index_key(job.tenant_id, job.id)
    store.put(key, json.dumps(document, sort_keys=True, indent=1).encode(), content_type="application/json")
    return key
