"""A delivered image named by its file: the job id and index a catalogan PNG records, and the file's sha256.

A variation or interpolation names its source images as job id + index. A client that holds the file instead
(`catalogan generate --variation-of out/b/00000003.png`, `catalogan jobs submit --variation-of ...`, the SDK's
`image_ref_from_file`) reads them here, locally, and sends `{"job_id", "index", "sha256"}`: the image bytes
never go to the server, which checks that `sha256` is the one it recorded for that image
(`db.latent_control`), so the job is made from exactly the file the client holds.

Bounded, because the path may name anything: a file over `MAX_SOURCE_FILE_BYTES` is refused before a byte is
read, and the read itself stops there. Only the PNG's chunks are walked (`db.png_text`) and the two text
chunks needed are read: no pixel decode. Standard library only: the light SDK install has no Pillow.

    source = read_source_file(Path("out/b/00000003.png"))   # SourceFile(job_id=..., index=3, sha256=...)
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from db.job_specs import MAX_IMAGES_PER_JOB, MAX_JOB_ID_CHARS
from db.png_text import PNG_SIGNATURE, PngChunkError, PngTextTooLongError, png_chunks, text_chunk

# A catalogan image is a few KiB (a 28x28 grey PNG with its provenance is about 3 KiB); 4 MiB leaves room for
# much larger models and still refuses a video or a disk image named by mistake before it is read.
MAX_SOURCE_FILE_BYTES = 4 << 20
MAX_FIELD_BYTES = 1024  # a job id or an index; compressed text is inflated to this much at most
JOB_ID_FIELD = "catalogan:job_id"
INDEX_FIELD = "catalogan:index"
# What the two fields may hold: a job id as the API makes them (and `JobSpec` accepts), an index of ASCII digits.
JOB_ID_TEXT = re.compile(rf"[A-Za-z0-9_-]{{1,{MAX_JOB_ID_CHARS}}}")
INDEX_TEXT = re.compile(r"[0-9]{1,9}")


class SourceFileError(ValueError):
    """Raised when a file cannot name a source image: missing, too large, not a PNG, or without the
    catalogan job id and index (the message says which)."""


@dataclass(frozen=True, slots=True)
class SourceFile:
    """What a catalogan PNG says it is (job id, image index) and the sha256 of its bytes."""

    job_id: str
    index: int
    sha256: str

    def to_json(self) -> dict[str, Any]:
        """The source as a request names it: `{"job_id", "index", "sha256"}`."""
        return {"job_id": self.job_id, "index": self.index, "sha256": self.sha256}


def read_limited(path: Path, max_bytes: int = MAX_SOURCE_FILE_BYTES) -> bytes:
    """The bytes of the regular file at `path`; `SourceFileError` when it is missing, not a regular file, or
    over `max_bytes` (checked on its size before reading, and again while reading: a file that grows in
    between is refused too)."""
    try:
        info = path.stat()
    except FileNotFoundError:
        raise SourceFileError("no such file") from None
    except OSError as exc:
        raise SourceFileError(f"cannot read it ({exc.strerror or exc})") from None
    if not stat.S_ISREG(info.st_mode):
        raise SourceFileError("not a regular file")
    if info.st_size > max_bytes:
        raise SourceFileError(
            f"{info.st_size} bytes; a catalogan image is at most {max_bytes} bytes here (not an image of a job?)"
        )
    try:
        with path.open("rb") as handle:
            data = handle.read(max_bytes + 1)
    except OSError as exc:
        raise SourceFileError(f"cannot read it ({exc.strerror or exc})") from None
    if len(data) > max_bytes:
        raise SourceFileError(f"over {max_bytes} bytes (it grew while being read)")
    return data


def png_text_fields(data: bytes, keywords: frozenset[str]) -> dict[str, str]:
    """The text fields named in `keywords` of a PNG's bytes (`db.png_text`'s chunk walk: every chunk's length
    and CRC checked, nothing decoded, other keywords never decompressed); `SourceFileError` when the bytes are
    not a whole PNG or name one of `keywords` twice (a field that does not decode is missing)."""
    if not data.startswith(PNG_SIGNATURE):
        raise SourceFileError("not a PNG file (catalogan reads a source's job and index from a PNG)")
    found: dict[str, str] = {}
    try:
        for kind, body in png_chunks(data):
            field = text_chunk(kind, body, MAX_FIELD_BYTES, keywords.__contains__)
            if field is None:  # another chunk, another keyword, or text that does not decode
                continue
            keyword, value = field
            if keyword in found:
                raise SourceFileError(f"{keyword} appears twice (not a file catalogan wrote)")
            found[keyword] = value
    except PngChunkError as exc:
        raise SourceFileError(f"a truncated or damaged PNG ({exc})") from None
    except PngTextTooLongError:
        raise SourceFileError(
            f"a source field over {MAX_FIELD_BYTES} bytes (not a file catalogan wrote)"
        ) from None
    return found


def source_of_png(data: bytes) -> SourceFile:
    """The job id and index a catalogan PNG records, and the sha256 of `data`; `SourceFileError` otherwise."""
    fields = png_text_fields(data, frozenset({JOB_ID_FIELD, INDEX_FIELD}))
    job_id, index = fields.get(JOB_ID_FIELD), fields.get(INDEX_FIELD)
    if job_id is None or index is None:
        missing = " and ".join(
            name for name, value in ((JOB_ID_FIELD, job_id), (INDEX_FIELD, index)) if not value
        )
        raise SourceFileError(f"the file records no {missing} (not an image of a catalogan job, or stripped)")
    if not JOB_ID_TEXT.fullmatch(job_id):
        raise SourceFileError(f"{JOB_ID_FIELD} {job_id[:80]!r} is not a job id")
    if not INDEX_TEXT.fullmatch(index) or int(index) > MAX_IMAGES_PER_JOB:
        raise SourceFileError(f"{INDEX_FIELD} {index[:80]!r} is not an image index 0..{MAX_IMAGES_PER_JOB}")
    return SourceFile(job_id, int(index), hashlib.sha256(data).hexdigest())


def read_source_file(path: str | os.PathLike[str]) -> SourceFile:
    """The source image a catalogan PNG at `path` names (job id, index) and its sha256, read locally and
    bounded (`MAX_SOURCE_FILE_BYTES`); `SourceFileError` saying why not."""
    return source_of_png(read_limited(Path(path)))
