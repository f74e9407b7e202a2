"""Exporting a finished job to a local folder: its images, its manifests, one contact sheet per category.

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
from sqlalchemy.orm import Session

from db.images import iter_job_images, manifest_keys
from db.status import ImageStatus
from db.storage import ObjectStore
from db.tables import Job
from workers.shards import SHARD_FORMAT, index_key, read_member

CONTACT_SHEET_MAX_IMAGES = 64
CONTACT_SHEET_COLUMNS = 8
CONTACT_SHEET_PADDING_PX = 2
# Tiles are enlarged (nearest neighbour, whole multiples) to at least this many pixels wide: 28 px is a thumbnail.
CONTACT_SHEET_MIN_TILE_PX = 112


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


def export_job(session: Session, store: ObjectStore, job: Job, folder: Path) -> ExportResult:
    """Copy a job's succeeded images and manifests into `folder`; write `contact-sheets/<category>.png`."""
    result = ExportResult(folder)
    prefix = f"{job.tenant_id}/jobs/{job.id}/"
    sheets: dict[str, list[bytes]] = defaultdict(list)
    shard: tuple[str, bytes] | None = None  # tar jobs: many image rows share one shard object
    for image in iter_job_images(session, job.id):
        if image.status is not ImageStatus.SUCCEEDED or image.key is None:
            continue
        if job.output_format == SHARD_FORMAT:
            if shard is None or shard[0] != image.key:
                shard = (image.key, store.get(image.key))
                _write(folder / image.key.removeprefix(prefix), shard[1])
            data = read_member(shard[1], int(image.index))
        else:
            data = store.get(image.key)
            _write(folder / image.key.removeprefix(prefix), data)
        result.images += 1
        if len(sheets[image.category]) < CONTACT_SHEET_MAX_IMAGES:
            sheets[image.category].append(data)
    extra = [index_key(job.tenant_id, job.id)] if job.output_format == SHARD_FORMAT else []
    for key in [*manifest_keys(job.tenant_id, job.id), *extra]:
        if store.exists(key):
            path = folder / key.removeprefix(prefix)
            _write(path, store.get(key))
            result.manifests.append(path)
    for category, images in sorted(sheets.items()):
        path = folder / "contact-sheets" / f"{category}.png"
        _write(path, contact_sheet(images))
        result.contact_sheets.append(path)
    return result
