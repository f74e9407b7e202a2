"""`db.png_text`: the one PNG text-chunk reader behind verify, source files and the console."""

from __future__ import annotations

import struct
import zlib

import pytest

from db.png_text import PNG_SIGNATURE, PngChunkError, PngTextTooLongError, png_chunks, text_chunk


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _itxt(keyword: str, text: bytes, *, compressed: bool = False) -> bytes:
    value = zlib.compress(text) if compressed else text
    return _chunk(b"iTXt", keyword.encode() + b"\x00" + bytes([int(compressed), 0]) + b"\x00\x00" + value)


def _png(*chunks: bytes) -> bytes:
    return (
        PNG_SIGNATURE
        + _chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0))
        + b"".join(chunks)
        + (_chunk(b"IEND", b""))
    )


def _fields(data: bytes, limit: int = 1024) -> dict[str, str]:
    found = {}
    for kind, body in png_chunks(data):
        field = text_chunk(kind, body, limit, lambda keyword: keyword.startswith("catalogan:"))
        if field is not None:
            found[field[0]] = field[1]
    return found


def test_text_of_every_kind_is_read_and_other_keywords_are_skipped() -> None:
    data = _png(
        _chunk(b"tEXt", b"catalogan:seed\x007"),
        _chunk(b"zTXt", b"catalogan:sku\x00\x00" + zlib.compress(b"SKU-1")),
        _itxt("catalogan:job_id", "j\u00f8b".encode()),
        _itxt("catalogan:index", b"3", compressed=True),
        _itxt("Comment", b"not ours"),
    )
    assert _fields(data) == {
        "catalogan:seed": "7", "catalogan:sku": "SKU-1", "catalogan:job_id": "j\u00f8b", "catalogan:index": "3"
    }  # fmt: skip


def test_a_cut_or_damaged_png_is_an_error_where_the_walk_reaches_it() -> None:
    whole = _png(_itxt("catalogan:seed", b"7"))
    with pytest.raises(PngChunkError, match="ends before IEND"):
        list(png_chunks(whole[:-12]))
    with pytest.raises(PngChunkError, match="cut short"):
        list(png_chunks(whole[:-20]))
    damaged = bytearray(whole)
    damaged[len(PNG_SIGNATURE) + 25 + 10] ^= 0xFF  # a byte inside the iTXt chunk's data
    with pytest.raises(PngChunkError, match="CRC mismatch"):
        list(png_chunks(bytes(damaged)))


def test_compressed_text_is_inflated_to_its_bound_and_unwanted_text_never() -> None:
    bomb = _itxt("catalogan:sku", b"a" * (16 << 20), compressed=True)
    with pytest.raises(PngTextTooLongError):
        _fields(_png(bomb), limit=1024)
    broken = _chunk(b"iTXt", b"catalogan:sku\x00\x01\x00\x00\x00not deflate")
    with pytest.raises(PngChunkError, match="compressed text"):
        _fields(_png(broken))
    # The same bomb and a broken stream under a keyword nobody asked for are skipped without inflating.
    unwanted_bomb = _itxt("Comment", b"a" * (16 << 20), compressed=True)
    unwanted_broken = _chunk(b"iTXt", b"other:sku\x00\x01\x00\x00\x00not deflate")
    assert _fields(_png(unwanted_bomb, unwanted_broken)) == {}
