"""Exporting a job to a local folder: its images (chunk by chunk while it runs), manifests, contact sheets.

Files keep the layout of their object keys below the job (`<category-or-sku>/<index:08d>.png`), and the
bytes are the stored bytes, so two jobs with the same model version, seed and request export identical files.

Every export records what it wrote in the folder's marker, `.catalogan-export.jsonl`: a header line naming the
job, then one line per file, appended *before* the file is written (so an interrupted export leaves no file it
did not record) and rewritten sorted when the export finishes (so the marker's bytes, too, do not depend on the
order chunks finished in). The marker is what lets `catalogan generate` tell a previous export of the same job
(exported again), another job's export (replaced with `--overwrite`, file by recorded file) and files nobody
exported (never touched): `check_output_folder`, `remove_export`.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from PIL import Image as PILImage
from sqlalchemy import select
from sqlalchemy.orm import Session

from db.cli_support import output_folder_problem
from db.images import manifest_keys
from db.status import ChunkStatus, ImageStatus
from db.storage import ObjectStore
from db.tables import Chunk, Image, Job
from workers.errors import ExportFolderError
from workers.shards import SHARD_FORMAT, index_key, read_member

CONTACT_SHEET_MAX_IMAGES = 64
CONTACT_SHEET_COLUMNS = 8
CONTACT_SHEET_PADDING_PX = 2
# Tiles are enlarged (nearest neighbour, whole multiples) to at least this many pixels wide: 28 px is a thumbnail.
CONTACT_SHEET_MIN_TILE_PX = 112
# GETs in flight while copying: one at a time is bound by the round trip, not by bandwidth or CPU
# (`bench/bench_pipeline.py` measures the export against the job-only rate).
EXPORT_READS_IN_FLIGHT = 8
# The list of what an export wrote into its folder (see the module docstring); format version 1.
EXPORT_MARKER_NAME = ".catalogan-export.jsonl"
EXPORT_MARKER_VERSION = 1
# How many files an error message names before it says "and N more".
NAMED_FILES_MAX = 3


@dataclass(frozen=True)
class PreviousExport:
    """A catalogan export found in a folder: its job and the files its marker records (relative, POSIX)."""

    job_id: str
    files: frozenset[str]


@dataclass
class ExportResult:
    """What an export wrote."""

    folder: Path
    images: int = 0
    contact_sheets: list[Path] = field(default_factory=list)
    manifests: list[Path] = field(default_factory=list)


def _write(path: Path, data: bytes | Iterable[bytes]) -> None:
    """Write `data` (bytes, or pieces of them: a manifest streamed from the store) to `path` atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    try:
        with temporary.open("wb") as handle:
            handle.writelines([data] if isinstance(data, bytes) else data)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    temporary.replace(path)


def _safe_relative(value: object) -> str | None:
    """`value` when it is a relative POSIX path that stays inside its folder (no `..`, not absolute)."""
    if not isinstance(value, str) or not value or "\\" in value or "\x00" in value:
        return None
    path = PurePosixPath(value)
    if path.is_absolute() or any(part in ("", ".", "..") for part in value.split("/")):
        return None
    return str(path)


def read_export_marker(folder: Path) -> PreviousExport | None:
    """The export recorded in `folder`'s marker; None when there is no marker or it cannot be trusted (not
    catalogan's format, or a line naming a path outside the folder). A torn line (an export killed while
    appending) is skipped: its file was not written yet."""
    try:
        lines = (folder / EXPORT_MARKER_NAME).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return None
    try:
        header = json.loads(lines[0]) if lines else None
    except json.JSONDecodeError:
        return None
    if not isinstance(header, dict) or header.get("catalogan_export") != EXPORT_MARKER_VERSION:
        return None
    job_id = header.get("job_id")
    if not isinstance(job_id, str) or not job_id:
        return None
    files = set()
    for line in lines[1:]:
        try:
            value = json.loads(line)
        except json.JSONDecodeError:
            continue
        path = _safe_relative(value)
        if path is None:
            return None  # a marker naming ../x or /etc/x is not ours: never act on it
        files.add(path)
    return PreviousExport(job_id, frozenset(files))


def _foreign_files(folder: Path, previous: PreviousExport | None) -> list[str]:
    """Everything under `folder` that is not a folder and not `previous`'s (a recorded file, a temporary file
    of one, its marker), sorted. A symbolic link counts as a file and is not followed; a marker that cannot
    be trusted counts as a file too."""
    recorded = previous.files if previous is not None else frozenset()
    ours = {EXPORT_MARKER_NAME, EXPORT_MARKER_NAME + ".tmp"} if previous is not None else set()
    foreign = []
    for root, folders, files in os.walk(folder):
        base = Path(root).relative_to(folder)
        entries = files + [name for name in folders if os.path.islink(os.path.join(root, name))]
        for name in entries:
            path = (base / name).as_posix()
            if path in ours or path in recorded or path.removesuffix(".tmp") in recorded:
                continue
            foreign.append(path)
    return sorted(foreign)


def _named(paths: list[str]) -> str:
    shown = ", ".join(repr(path) for path in paths[:NAMED_FILES_MAX])
    more = len(paths) - NAMED_FILES_MAX
    return shown + (f" and {more} more" if more > 0 else "")


def check_output_folder(folder: Path) -> PreviousExport | None:
    """The catalogan export `folder` holds (None when the folder is missing or empty); `ExportFolderError`
    naming `--out` when it holds anything that no export recorded: such files are the user's, and an export
    mixed with them could neither be told apart nor be replaced safely later. A path that cannot be made a
    folder (a file, a symbolic link leading nowhere or not to a folder) is refused too: the export's first
    `mkdir` would fail on it only after the job ran."""
    problem = output_folder_problem(folder)
    if problem is not None:
        raise ExportFolderError(f"--out {str(folder)!r}: cannot be a folder: {problem}")
    if not folder.is_dir():
        return None
    previous = read_export_marker(folder)
    foreign = _foreign_files(folder, previous)
    if not foreign:
        return previous
    where = f"--out {str(folder)!r}"
    if previous is None:
        raise ExportFolderError(
            f"{where}: not empty and not a catalogan export (holds {_named(foreign)}): "
            "choose a new or empty folder"
        )
    raise ExportFolderError(
        f"{where}: holds {_named(foreign)}, which no catalogan export wrote: choose a new or empty folder "
        "(--overwrite only replaces the files of a previous export)"
    )


def check_replaceable(folder: Path, previous: PreviousExport | None, *, job_id: str, overwrite: bool) -> None:
    """`ExportFolderError` naming `--out` when `folder` holds another job's export and `overwrite` is off;
    the same job's export is simply exported again (the same files, the same bytes)."""
    if previous is not None and previous.job_id != job_id and not overwrite:
        raise ExportFolderError(
            f"--out {str(folder)!r}: holds the export of job {previous.job_id}: add --overwrite to replace it, "
            "or choose a new or empty folder"
        )


def remove_export(folder: Path, previous: PreviousExport) -> int:
    """Remove the files `previous` recorded (and the folders that leaves empty, and its marker), nothing
    else; returns how many recorded files it removed. Call `check_output_folder` first: it refuses a folder
    that holds other files."""
    removed = 0
    parents: set[Path] = set()
    for relative in sorted(previous.files):
        folders = [parent for parent in Path(relative).parents if parent != Path(".")]
        if any((folder / parent).is_symlink() for parent in folders):
            continue  # a linked folder leads out of `folder`: what lies there is not this export's
        path = folder / relative
        temporary = path.with_name(path.name + ".tmp")  # left by an export killed inside `_write`
        if temporary.is_symlink() or temporary.is_file():
            temporary.unlink()
        if path.is_symlink() or path.is_file():
            path.unlink()
            removed += 1
        parents.update(folders)
    # Deepest first, so that a folder emptied by its emptied sub-folder goes too; a non-empty one stays.
    for parent in sorted(parents, key=lambda p: len(p.parts), reverse=True):
        with contextlib.suppress(OSError):
            (folder / parent).rmdir()
    (folder / EXPORT_MARKER_NAME).unlink(missing_ok=True)
    return removed


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

    Each file is recorded in the folder's marker before it is written. The first write refuses
    (`ExportFolderError`) a folder whose marker names another job: one folder never mixes two jobs' files.

    The session only reads (a `db.engine.read_only_session_factory` one keeps a SQLite reader from blocking the
    workers): each call ends its transaction once it has the keys, before the store reads and file writes.
    """

    def __init__(self, store: ObjectStore, job: Job, folder: Path) -> None:
        self.store = store
        self.job_id, self.tenant_id, self.output_format = job.id, job.tenant_id, job.output_format
        self.folder = folder
        self.prefix = f"{job.tenant_id}/jobs/{job.id}/"
        self.result = ExportResult(folder)
        self._exported_chunks: set[int] = set()
        self._recorded: set[str] | None = None  # None until the marker is opened by the first write

    def _path(self, key: str) -> Path:
        return self.folder / key.removeprefix(self.prefix)

    def _write_marker(self, files: set[str]) -> None:
        header = json.dumps(
            {"catalogan_export": EXPORT_MARKER_VERSION, "job_id": self.job_id}, sort_keys=True
        )
        lines = [header, *(json.dumps(path) for path in sorted(files))]
        _write(self.folder / EXPORT_MARKER_NAME, ("\n".join(lines) + "\n").encode())

    def _record(self, paths: list[Path]) -> None:
        """Append `paths` to the marker (before they are written); opens the marker on the first call."""
        if self._recorded is None:
            previous = read_export_marker(self.folder)
            if previous is not None and previous.job_id != self.job_id:
                raise ExportFolderError(
                    f"--out {str(self.folder)!r}: holds the export of job {previous.job_id}, "
                    f"not of job {self.job_id}: remove it first"
                )
            # The same job's marker (an earlier or interrupted export) is kept, rewritten without torn lines.
            self._recorded = set(previous.files) if previous is not None else set()
            self._write_marker(self._recorded)
        new = [path.relative_to(self.folder).as_posix() for path in paths]
        new = [path for path in dict.fromkeys(new) if path not in self._recorded]
        if new:
            with (self.folder / EXPORT_MARKER_NAME).open("a", encoding="utf-8") as marker:
                marker.write("".join(json.dumps(path) + "\n" for path in new))
            self._recorded.update(new)

    def _export_chunks(self, session: Session, chunk_ids: list[int]) -> None:
        if not chunk_ids:
            # Nothing finished yet: the folder (and its marker) is made with the first file, so a run that
            # stops before any chunk finished (a worker that could not start) leaves no folder behind.
            _end_reads(session)
            return
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
        _end_reads(session)
        self._record([self._path(key) for key in objects])
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
                self._record([path])
                if key in extra:
                    _write(path, self._local_shard_index(key))
                else:
                    _write(path, self.store.iter_chunks(key))  # a piece at a time: a manifest can be large
                self.result.manifests.append(path)
        for category, images in sorted(self._sheet_images(session).items()):
            path = self.folder / "contact-sheets" / f"{category}.png"
            self._record([path])
            _write(path, contact_sheet(images))
            self.result.contact_sheets.append(path)
        # The marker in canonical form: sorted, and only what is there (an earlier run may have been cut short).
        self._record([])
        assert self._recorded is not None
        self._write_marker({path for path in self._recorded if (self.folder / path).is_file()})
        return self.result

    def _local_shard_index(self, key: str) -> bytes:
        """The job's `shards/index.json` with each shard's `url` made the shard's path relative to the folder
        (`shards/00000000.tar`), everything else as stored. The stored url is the store's URI (`file:///<data
        folder>/objects/...`, `s3://...`): copied as is it pointed out of the folder, at the data folder it
        came from, and made the index differ from one machine to the next."""
        document = json.loads(self.store.get(key))
        for shard in document["shards"]:
            shard["url"] = self._path(str(shard["key"])).relative_to(self.folder).as_posix()
        return json.dumps(document, sort_keys=True, indent=1).encode()  # as `workers.shards` writes it

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


def _end_reads(session: Session) -> None:
    # The keys are read: end the transaction before the store reads and file writes, so that no SQLite lock and
    # no pooled PostgreSQL connection is held while they run (the session holds no changes of its own).
    if session.in_transaction():
        session.commit()


def export_job(session: Session, store: ObjectStore, job: Job, folder: Path) -> ExportResult:
    """Copy a job's succeeded images and manifests into `folder`; write `contact-sheets/<category>.png`."""
    return JobExport(store, job, folder).finish(session)
