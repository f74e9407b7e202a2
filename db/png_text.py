"""A PNG's text chunks, read by walking its chunks: no pixel data decoded, compressed text inflated to a bound.

The one reader behind every place that takes provenance out of a PNG it did not necessarily write:
`catalogan verify` (`workers.verification`), a variation's source named by its file (`db.source_files`) and
the console's image page (`scheduler.console.provenance`). A PNG is a signature and then chunks, each
length + type + data + CRC; text is in tEXt (Latin-1), zTXt (Latin-1, deflated) and iTXt (UTF-8, deflated or
not) chunks. Catalogan writes its `catalogan:*` fields and an XMP packet as uncompressed text before the image
data, but a hostile file may put anything anywhere, so:

- `png_chunks` checks each chunk's length against the bytes there and its CRC, and stops at IEND;
- `text_chunk` returns only the keywords asked for (anything else is never decompressed) and inflates at most
  `limit` bytes (`zlib.decompress`'s bufsize is only a starting size, not a limit).

Standard library only: the SDK's light install uses it (through `db.source_files`) without Pillow.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable, Iterator

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TEXT_CHUNKS = frozenset({b"tEXt", b"zTXt", b"iTXt"})


class PngChunkError(ValueError):
    """Raised when a PNG ends before IEND, a chunk runs past the end, a CRC is wrong, or compressed text is not
    a deflate stream: a cut or damaged file."""


class PngTextTooLongError(ValueError):
    """Raised when a text chunk inflates past the bound its reader set."""


def png_chunks(data: bytes) -> Iterator[tuple[bytes, memoryview]]:
    """Each chunk of the PNG `data` as (type, body), from the first after the signature to IEND, its length
    and CRC checked; `PngChunkError` (raised when the walk reaches the fault) otherwise. Nothing is
    decompressed. The caller checks the signature."""
    view = memoryview(data)
    position = len(PNG_SIGNATURE)
    while True:
        if position + 12 > len(data):
            raise PngChunkError("the file ends before IEND")
        length, kind = struct.unpack_from(">I4s", data, position)
        end = position + 12 + length  # length, type, data, CRC
        if end > len(data):
            raise PngChunkError(f"chunk {kind.decode('latin-1')!r} cut short")
        body = view[position + 8 : end - 4]
        if zlib.crc32(body, zlib.crc32(kind)) != struct.unpack_from(">I", data, end - 4)[0]:
            raise PngChunkError(f"chunk {kind.decode('latin-1')!r}: CRC mismatch")
        yield kind, body
        if kind == b"IEND":
            return
        position = end


def inflate(compressed: bytes, limit: int) -> bytes:
    """At most `limit` bytes of a deflated text: `PngTextTooLongError` past it, `PngChunkError` for a broken
    stream."""
    inflater = zlib.decompressobj()
    try:
        text = inflater.decompress(compressed, limit + 1)
    except zlib.error as exc:
        raise PngChunkError(f"compressed text: {exc}") from exc
    if len(text) > limit:
        raise PngTextTooLongError(f"a text chunk inflates past {limit:,} bytes")
    return text


def text_chunk(
    kind: bytes, body: bytes | memoryview, limit: int, wanted: Callable[[str], bool]
) -> tuple[str, str] | None:
    """(keyword, text) of a tEXt, zTXt or iTXt chunk `kind` with data `body`, as Pillow reads them; None for
    another chunk type, a keyword `wanted` refuses (its text is never decompressed) or text that does not
    decode. Compressed text is inflated to `limit` bytes at most (`inflate`'s errors otherwise)."""
    if kind not in TEXT_CHUNKS:
        return None
    keyword_bytes, separator, rest = bytes(body).partition(b"\x00")
    keyword = keyword_bytes.decode("latin-1")
    if not separator or not wanted(keyword):
        return None
    if kind == b"tEXt":
        return keyword, rest.decode("latin-1")
    if kind == b"zTXt":  # compression method, then the deflated text
        return keyword, inflate(rest[1:], limit).decode("latin-1")
    if len(rest) < 2:  # iTXt: compression flag, method, language \0, translated keyword \0, text
        return None
    compressed, rest = rest[0], rest[2:]
    _language, _, rest = rest.partition(b"\x00")
    _translated, _, raw = rest.partition(b"\x00")
    try:
        return keyword, (inflate(raw, limit) if compressed else raw).decode("utf-8")
    except UnicodeDecodeError:
        return None
