"""Bad input to `catalogan verify`: a truncated or corrupt image, a provenance whose model version no registry
can hold, and image bombs (a huge declared size, a huge file) are one `Error:` line naming the file, exit 8
(NOT_VERIFIED, as for a file that is not an image), never a traceback, and bombs are refused from their size
or header before anything is read whole or decoded."""

from __future__ import annotations

import io
import struct
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner, Result
from PIL import Image as PILImage
from PIL import ImageFile

from db.cli_support import ExitCode
from db.storage import LocalStore
from models.config import PRESETS
from scheduler.cli.root import cli
from tests.cli_results import one_error_line
from workers.encoding import Provenance, encode_image, provenance_chunks
from workers.errors import ProvenanceError
from workers.verification import (
    MAX_FILE_BYTES,
    MAX_IMAGE_SIDE_PX,
    PNG_SIGNATURE,
    _decode_pixels,
    read_provenance,
    verify_file,
)

PROVENANCE = Provenance("tiny@1", "0" * 64, "job-1", 0, 1234, "a", None)


def _png(model_version: str = "tiny@1") -> bytes:
    pixels = (np.arange(32 * 32).reshape(32, 32, 1) % 256).astype(np.uint8)
    provenance = Provenance(model_version, "0" * 64, "job-1", 0, 1234, "a", None)
    return encode_image(pixels, "png", provenance)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_declaring(width: int, height: int, *, color_type: int = 6, idat: bytes = b"") -> bytes:
    """A PNG whose IHDR declares width × height (8-bit, RGBA by default), with catalogan's provenance chunks
    where catalogan writes them, then `idat` as its only IDAT (none when empty) and IEND."""
    header = _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0))
    image_data = _chunk(b"IDAT", idat) if idat else b""
    return PNG_SIGNATURE + header + provenance_chunks(PROVENANCE) + image_data + _chunk(b"IEND", b"")


@pytest.fixture
def no_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any pixel decoding by Pillow fails the test (`ImageFile.load` is where every decoder runs)."""

    def load(self: ImageFile.ImageFile) -> None:
        raise AssertionError(f"decoded a {self.size[0]}×{self.size[1]} image")

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)


def _verify(env: dict[str, str] | None, *args: str) -> Result:
    return CliRunner().invoke(cli, ["verify", *args], env=env, prog_name="catalogan")


@pytest.mark.parametrize("keep", [60, 100, 600, -20])
def test_a_truncated_png_is_not_verified_in_one_line(tmp_path: Path, keep: int) -> None:
    """Given a valid catalogan PNG cut short (-20: inside its image data, after the provenance), verify exits 8
    with one line naming the file, and leaves it as is."""
    data = _png()[:keep]
    path = tmp_path / "trunc.png"
    path.write_bytes(data)
    result = _verify(None, str(path))
    assert result.exit_code == ExitCode.NOT_VERIFIED, result.output
    line = one_error_line(result)
    assert str(path) in line and "truncated or corrupt" in line
    assert path.read_bytes() == data


def test_a_provenance_version_beyond_nine_digits_is_not_verified(
    tmp_path: Path, sqlite_url: str, local_store: LocalStore
) -> None:
    """Given a PNG whose provenance names `tiny@<20 digits>`, `verify --regenerate` exits 8 with one line naming the
    file and the model_version field (no OverflowError from the database)."""
    path = tmp_path / "huge.png"
    path.write_bytes(_png("tiny@99999999999999999999"))
    env = {
        "CATALOGAN_DATABASE_URL": sqlite_url,
        "CATALOGAN_STORAGE_URL": local_store.url,
        "CATALOGAN_DEVICE": "cpu",
    }
    result = _verify(env, str(path), "--regenerate")
    assert result.exit_code == ExitCode.NOT_VERIFIED, result.output
    line = one_error_line(result)
    assert str(path) in line and "model_version" in line and "1 to 9 digits" in line
    # Reading the provenance alone still works: the file is not refused for what it claims
    assert _verify(None, str(path)).exit_code == ExitCode.OK


def test_a_png_declaring_20000_by_20000_pixels_is_not_a_catalogan_image(tmp_path: Path) -> None:
    """Given a header-only PNG declaring 20,000 × 20,000 RGBA (past Pillow's bomb error), verify exits 8 with
    one line saying it is not a catalogan image (before: an uncaught `DecompressionBombError`, exit 1)."""
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_declaring(20_000, 20_000))
    result = _verify(None, str(path))
    assert result.exit_code == ExitCode.NOT_VERIFIED, result.output
    line = one_error_line(result)
    assert str(path) in line and "not a catalogan image" in line and "20000×20000" in line


def test_a_13000_by_13000_png_is_refused_from_its_header_without_decoding(
    tmp_path: Path, no_decoding: None
) -> None:
    """Given a PNG with a catalogan provenance declaring 13,000 × 13,000 RGBA (just under Pillow's bomb
    warning) and a real start of zero pixels, verify refuses it from its header and decodes nothing (before:
    reading its text chunks decoded it, 918 MB of RSS and 6.3 s for a 657 KB file)."""
    rows = zlib.compress(bytes(100 * (1 + 13_000 * 4)))[:-4]  # the first 100 rows, the stream left open
    data = _png_declaring(13_000, 13_000, idat=rows)
    path = tmp_path / "bomb.png"
    path.write_bytes(data)
    result = _verify(None, str(path))
    assert result.exit_code == ExitCode.NOT_VERIFIED, result.output
    line = one_error_line(result)
    assert "not a catalogan image" in line and "13000×13000" in line
    with pytest.raises(ProvenanceError, match="not a catalogan image"):
        verify_file(data)
    assert _decode_pixels(data) is None  # `--regenerate`'s decode has the same bound


def test_a_file_over_the_size_cap_is_refused_before_it_is_read(tmp_path: Path) -> None:
    """Given a catalogan PNG padded (sparse) to one byte over MAX_FILE_BYTES, verify exits 8 with one line
    naming its size, having read almost none of it (before: read whole, then reported as a damaged image)."""
    path = tmp_path / "big.png"
    path.write_bytes(_png())
    with path.open("r+b") as handle:
        handle.truncate(MAX_FILE_BYTES + 1)
    genuine = tmp_path / "genuine.png"
    genuine.write_bytes(_png())
    assert _verify(None, str(genuine)).exit_code == ExitCode.OK  # imports the command before memory is traced
    tracemalloc.start()
    try:
        result = _verify(None, str(path))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.exit_code == ExitCode.NOT_VERIFIED, result.output
    line = one_error_line(result)
    assert "not a catalogan image" in line and f"{MAX_FILE_BYTES + 1:,} bytes" in line
    assert peak < MAX_FILE_BYTES // 4, f"{peak:,} bytes traced"


def test_bytes_that_never_end_are_refused_one_byte_past_the_cap() -> None:
    """Given `/dev/zero` (size 0 to `stat`, endless to read), verify stops reading one byte past the cap and
    exits 8 (before: it read with no bound)."""
    result = _verify(None, "/dev/zero")
    assert result.exit_code == ExitCode.NOT_VERIFIED, result.output
    assert "not a catalogan image" in one_error_line(result)


@pytest.mark.parametrize("max_pixels", [100, 600], ids=["bomb-error", "bomb-warning"])
def test_pillows_decompression_bomb_check_is_a_damaged_file_not_a_crash(
    monkeypatch: pytest.MonkeyPatch, max_pixels: int
) -> None:
    """Given a WebP of 32 × 32 while Pillow's bomb limit is lowered under it (an error past twice the limit, a
    warning — an error here, as under `python -W error` — past it), reading it is a ProvenanceError saying the
    image is damaged (before: `DecompressionBombError` escaped)."""
    pixels = (np.arange(32 * 32).reshape(32, 32, 1) % 256).astype(np.uint8)
    data = encode_image(pixels, "webp", PROVENANCE)
    monkeypatch.setattr(PILImage, "MAX_IMAGE_PIXELS", max_pixels)
    with pytest.raises(ProvenanceError, match="truncated or corrupt"):
        read_provenance(data)


def test_provenance_chunks_after_the_image_data_are_still_read(no_decoding: None) -> None:
    """Given a catalogan PNG whose text chunks another tool moved after IDAT, its provenance still reads (the
    chunks are walked, not decoded)."""
    data = _png()
    chunks = provenance_chunks(PROVENANCE)
    start = data.index(chunks)
    moved = data[:start] + data[start + len(chunks) : -12] + chunks + data[-12:]  # IEND is the last 12 bytes
    assert read_provenance(moved) == read_provenance(data)


def test_the_largest_image_verify_accepts_fits_its_file_cap_and_every_preset_fits_both() -> None:
    """Given noise at MAX_IMAGE_SIDE_PX square in RGB (incompressible: the largest file of that size), its file
    is under MAX_FILE_BYTES and verifies; and no preset makes images larger than MAX_IMAGE_SIDE_PX."""
    assert all(preset.model.resolution <= MAX_IMAGE_SIDE_PX for preset in PRESETS.values())
    noise = np.random.default_rng(0).integers(
        0, 256, (MAX_IMAGE_SIDE_PX, MAX_IMAGE_SIDE_PX, 3), dtype=np.uint8
    )
    for output_format in ("png", "webp"):
        data = encode_image(noise, output_format, PROVENANCE)
        assert len(data) <= MAX_FILE_BYTES
        assert read_provenance(data).provenance == PROVENANCE
        decoded = _decode_pixels(data)
        assert decoded is not None and decoded.shape == noise.shape
    bigger = io.BytesIO()
    PILImage.new("L", (MAX_IMAGE_SIDE_PX + 1, 1)).save(bigger, format="PNG")
    assert _decode_pixels(bigger.getvalue()) is None
