"""Exporting a job to a local folder: its images (chunk by chunk while it runs), manifests, contact sheets.

Files keep the layout of their object keys below the job (`<category-or-sku>/<index:08d>.png`), and the
bytes are the stored bytes, so two jobs with the same model version, seed and request export identical files.
"""

from __future__ import annotations

import io
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image as PILImage
from sqlalchemy import select
from sqlalchemy.orm import Session

from db.images import manifest_keys
from db.status import ChunkStatus, ImageStatus
from db.storage import ObjectStore
from db.tables import Chunk, Image, Job
from workers.shards import SHARD_FORMAT, index_key, read_member

CONTACT_SHEET_MAX_IMAGES = 64
CONTACT_SHEET_COLUMNS = 8
CONTACT_SHEET_PADDING_PX = 2
# Tiles are enlarged (nearest neighbour, whole multiples) to at least this many pixels wide: 28 px is a thumbnail.
CONTACT_SHEET_MIN_TILE_PX = 112
# GETs in flight while copying: one at a time is bound by the round trip, not by bandwidth or CPU
# (`bench/bench_pipeline.py` measures the export against the job-only rate).
EXPORT_READS_IN_FLIGHT = 8


@dataclass
class ExportResult:
    """What an export wrote."""

    folder: Path
    images: int = 0
    contact_sheets: list[Path] = field(default_factory=list)
    manifests: list[Path] = field(default_factory=list)


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_bytes(data)
    temporary.replace(path)


def contact_sheet(images: list[bytes]) -> bytes:
    """A PNG grid of up to `CONTACT_SHEET_MAX_IMAGES` images (enlarged, white padding, row-major, deterministic)."""
    tiles = [PILImage.open(io.BytesIO(data)).convert("RGB") for data in images[:CONTACT_SHEET_MAX_IMAGES]]
    if not tiles:
        raise ValueError("contact sheet: no images")
    scale = max(1, CONTACT_SHEET_MIN_TILE_PX // tiles[0].size[0])
    if scale > 1:
        tiles = [
            tile.resize((tile.width * scale, tile.height * scale), PILImage.Resampling.NEAREST)
            for tile in tiles
        ]
    width, height = tiles[0].size
    columns = min(CONTACT_SHEET_COLUMNS, len(tiles))
    rows = math.ceil(len(tiles) / columns)
    pad = CONTACT_SHEET_PADDING_PX
    sheet = PILImage.new("RGB", (columns * (width + pad) + pad, rows * (height + pad) + pad), "white")
    for position, tile in enumerate(tiles):
        row, column = divmod(position, columns)
        sheet.paste(tile, (pad + column * (width + pad), pad + row * (height + pad)))
    buffer = io.BytesIO()
    sheet.save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()


class JobExport:
    """An export that follows a running job: the images of each finished chunk as soon as it finishes.

    `export_finished(session)` copies the images of the chunks that finished since its last call (a chunk's
    rows are committed with its completion, so a finished chunk is complete); `finish(session)` copies what
    is left, the manifests, and the contact sheets — built from the first images of each category *in index
    order*, read back from the exported files, so they do not depend on the order chunks finished in.
    """

    def __init__(self, store: ObjectStore, job: Job, folder: Path) -> None:
        self.store = store
        self.job_id, self.tenant_id, self.output_format = job.id, job.tenant_id, job.output_format
        self.folder = folder
        self.prefix = f"{job.tenant_id}/jobs/{job.id}/"
        self.result = ExportResult(folder)
        self._exported_chunks: set[int] = set()

    def _path(self, key: str) -> Path:
        return self.folder / key.removeprefix(self.prefix)

    def _export_chunks(self, session: Session, chunk_ids: list[int]) -> None:
        objects: list[str] = []
        images = 0
        for chunk_id in chunk_ids:
            rows = session.execute(
                select(Image.key)
                .where(
                    Image.chunk_id == chunk_id, Image.status == ImageStatus.SUCCEEDED, Image.key.is_not(None)
                )
                .order_by(Image.index)
            ).scalars()
            keys = [str(key) for key in rows]
            # A tar chunk's rows all name its one shard object; a png chunk's name one object each.
            objects += sorted(set(keys)) if self.output_format == SHARD_FORMAT else keys
            images += len(keys)
        # One pool of reads for every chunk of this call.
        for key, data in self.store.get_many(objects, in_flight=EXPORT_READS_IN_FLIGHT):
            _write(self._path(key), data)
        self.result.images += images
        self._exported_chunks.update(chunk_ids)

    def export_finished(self, session: Session) -> int:
        """Copy the images of chunks that finished since the last call; returns how many images it copied."""
        before = self.result.images
        finished = session.scalars(
            select(Chunk.id).where(Chunk.job_id == self.job_id, Chunk.status == ChunkStatus.SUCCEEDED)
        )
        self._export_chunks(session, sorted(set(finished) - self._exported_chunks))
        return self.result.images - before

    def finish(self, session: Session) -> ExportResult:
        """Copy every remaining image, the manifests (and tar index), and write the contact sheets."""
        every = session.scalars(select(Chunk.id).where(Chunk.job_id == self.job_id))
        self._export_chunks(session, sorted(set(every) - self._exported_chunks))
        extra = [index_key(self.tenant_id, self.job_id)] if self.output_format == SHARD_FORMAT else []
        for key in [*manifest_keys(self.tenant_id, self.job_id), *extra]:
            if self.store.exists(key):
                path = self._path(key)
                _write(path, self.store.get(key))
                self.result.manifests.append(path)
        for category, images in sorted(self._sheet_images(session).items()):
            path = self.folder / "contact-sheets" / f"{category}.png"
            _write(path, contact_sheet(images))
            self.result.contact_sheets.append(path)
        return self.result

    def _sheet_images(self, session: Session) -> dict[str, list[bytes]]:
        """The first `CONTACT_SHEET_MAX_IMAGES` exported images of each category, in index order."""
        sheets: dict[str, list[bytes]] = defaultdict(list)
        categories = session.scalars(select(Image.category).where(Image.job_id == self.job_id).distinct())
        for category in sorted(categories):
            rows = session.execute(
                select(Image.index, Image.key)
                .where(
                    Image.job_id == self.job_id,
                    Image.category == category,
                    Image.status == ImageStatus.SUCCEEDED,
                    Image.key.is_not(None),
                )
                .order_by(Image.index)
                .limit(CONTACT_SHEET_MAX_IMAGES)
            ).all()
            for index, key in rows:
                data = self._path(str(key)).read_bytes()
                sheets[category].append(
                    read_member(data, int(index)) if self.output_format == SHARD_FORMAT else data
                )
        return sheets


def export_job(session: Session, store: ObjectStore, job: Job, folder: Path) -> ExportResult:
    """Copy a job's succeeded images and manifests into `folder`; write `contact-sheets/<category>.png`."""
    return JobExport(store, job, folder).finish(session)
