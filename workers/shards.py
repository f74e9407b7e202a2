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


_BLOCK = 512
_RECORD = 20 * _BLOCK  # archives are padded to whole records, as tar(1) and Python's tarfile do
_USTAR_MAGIC = b"ustar\x0000"


def _octal(value: int, width: int) -> bytes:
    """A USTAR numeric field: zero-padded octal digits and a NUL."""
    return b"%0*o\x00" % (width - 1, value)


def _field(text: bytes, width: int) -> bytes:
    return text + b"\x00" * (width - len(text))


def ustar_header(name: str, size: int) -> bytes:
    """The 512-byte USTAR header of a regular file: mode 0644, owner 0:0 with empty names, mtime 0.

    Written here rather than by `tarfile` for speed (a shard has 2,000 members) and so that the bytes
    cannot change with the Python version; a test checks them against `tarfile`'s USTAR output.
    """
    encoded = name.encode("ascii")
    if len(encoded) > 100:
        raise ValueError(f"member name {name!r}: longer than 100 bytes")
    header = b"".join(
        (
            _field(encoded, 100),
            _octal(SHARD_MEMBER_MODE, 8),
            _octal(0, 8),  # uid
            _octal(0, 8),  # gid
            _octal(size, 12),
            _octal(0, 12),  # mtime: no clock in the bytes, so a rerun writes the same shard
            b" " * 8,  # checksum, computed over the header with this field as spaces
            b"0",  # regular file
            _field(b"", 100),  # link name
            _USTAR_MAGIC,
            _field(b"", 32),  # owner name
            _field(b"", 32),  # group name
            _field(b"", 8),  # device major (empty for a regular file)
            _field(b"", 8),  # device minor
            _field(b"", 155),  # name prefix
        )
    )
    header += b"\x00" * (_BLOCK - len(header))
    checksum = b"%06o\x00 " % sum(header)
    return header[:148] + checksum + header[156:]


def _member(name: str, data: bytes) -> bytes:
    return ustar_header(name, len(data)) + data + b"\x00" * (-len(data) % _BLOCK)


def build_shard(members: Iterable[ShardMember]) -> bytes:
    """A deterministic USTAR archive of the members in index order (png then json per sample)."""
    parts = []
    for member in sorted(members, key=lambda item: item.index):
        parts.append(_member(member_name(member.index), member.png))
        metadata = json.dumps(member.metadata, sort_keys=True, separators=(",", ":")).encode()
        parts.append(_member(member_name(member.index, "json"), metadata))
    parts.append(b"\x00" * (2 * _BLOCK))  # end-of-archive marker
    size = sum(len(part) for part in parts)
    parts.append(b"\x00" * (-size % _RECORD))
    return b"".join(parts)


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


ShardRow = tuple[str, int, int, int]  # (key, images, first index, last index) of one shard


def shard_index_rows(session: Session, job: Job) -> list[ShardRow]:
    """The shards of a finished tar job from its image rows, in index order (what `shards/index.json` lists)."""
    rows = session.execute(
        select(Image.key, func.count(Image.id), func.min(Image.index), func.max(Image.index))
        .where(Image.job_id == job.id, Image.status == ImageStatus.SUCCEEDED, Image.key.is_not(None))
        .group_by(Image.key)
        .order_by(func.min(Image.index))
    ).all()
    return [(str(key), int(count), int(first), int(last)) for key, count, first, last in rows]


def put_shard_index(store: ObjectStore, tenant_id: str, job_id: str, rows: list[ShardRow]) -> str:
    """Write `shards/index.json` for the shards `rows` (their sizes listed from the store); returns its key.

    Document: `format` ("webdataset"), `member_extensions`, `images`, and `shards` in index order, each with
    `key`, `url` (the store URI), `first_index`, `last_index`, `images` and `size_bytes`.
    """
    sizes = {info.key: info.size_bytes for info in store.list(shard_prefix(tenant_id, job_id))}
    shards: list[dict[str, Any]] = [
        {
            "key": key,
            "url": store.uri(key),
            "first_index": first,
            "last_index": last,
            "images": count,
            "size_bytes": sizes.get(key),
        }
        for key, count, first, last in rows
    ]
    document = {
        "format": "webdataset",
        "member_extensions": [SHARD_IMAGE_FORMAT, "json"],
        "images": sum(int(shard["images"]) for shard in shards),
        "shards": shards,
    }
    key = index_key(tenant_id, job_id)
    store.put(key, json.dumps(document, sort_keys=True, indent=1).encode(), content_type="application/json")
    return key


def write_shard_index(session: Session, store: ObjectStore, job: Job) -> str:
    """Write `shards/index.json` for a finished tar job from its image rows; returns its key
    (`shard_index_rows` then `put_shard_index`)."""
    return put_shard_index(store, job.tenant_id, job.id, shard_index_rows(session, job))
