"""`db.source_files`: a source image named by a file the client holds, read locally and bounded."""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import pytest

from db.png_text import PNG_SIGNATURE
from db.source_files import MAX_FIELD_BYTES, SourceFileError, read_source_file, source_of_png


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _png(*text: tuple[str, bytes, bool]) -> bytes:
    chunks = b"".join(
        _chunk(b"iTXt", key.encode() + b"\x00" + bytes([int(packed), 0]) + b"\x00\x00" + value)
        for key, value, packed in text
    )
    header = _chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0))
    return PNG_SIGNATURE + header + chunks + _chunk(b"IEND", b"")


def test_a_catalogan_png_names_its_job_index_and_bytes() -> None:
    data = _png(("catalogan:job_id", b"a" * 32, False), ("catalogan:index", b"7", False))
    source = source_of_png(data)
    assert (source.job_id, source.index, len(source.sha256)) == ("a" * 32, 7, 64)


@pytest.mark.timeout(20)
def test_a_pipe_or_a_device_is_refused_before_it_is_opened(tmp_path: Path) -> None:
    """Given a FIFO with no writer (opening it would block forever) and /dev/zero (reading it never ends) /
    Then each is refused as not a regular file from `stat`, before any open or read."""
    fifo = tmp_path / "source.png"
    os.mkfifo(fifo)
    for path in (fifo, Path("/dev/zero")):
        with pytest.raises(SourceFileError, match="not a regular file"):
            read_source_file(path)


def test_a_field_that_inflates_past_its_bound_is_refused_not_inflated() -> None:
    """Given a job id field compressed from 16 MiB / Then it is refused after MAX_FIELD_BYTES of output."""
    bomb = _png(
        ("catalogan:job_id", zlib.compress(b"a" * (16 << 20)), True), ("catalogan:index", b"1", False)
    )
    with pytest.raises(SourceFileError, match=f"over {MAX_FIELD_BYTES} bytes"):
        source_of_png(bomb)


def test_a_field_given_twice_is_refused() -> None:
    twice = _png(("catalogan:job_id", b"a" * 32, False), ("catalogan:job_id", b"b" * 32, False))
    with pytest.raises(SourceFileError, match="appears twice"):
        source_of_png(twice)
