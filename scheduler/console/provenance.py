"""Reading the provenance a delivered file carries about itself, without Pillow or torch.

Workers write it (`workers.encoding.Provenance`) as one PNG `iTXt` chunk per `catalogan:<field>` plus an XMP
packet, or, for lossless WebP, as the XMP packet only (its `catalogan:<field>="..."` attributes). Fields
include model version, checkpoint sha256, job id, index, seed, category, SKU, redraw and — when the worker
recorded how it computed the pixels — `backend`, `device_kind`, `dtype`, `compute_batch`.
"""

from __future__ import annotations

import re
import struct
import zlib
from html import unescape

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PREFIX = "catalogan:"
MAX_TEXT_BYTES = 1 << 20  # a text chunk larger than this is not decoded
_XMP_ATTRIBUTE = re.compile(r'catalogan:([A-Za-z0-9_]+)="([^"]*)"')


def _inflate(compressed: bytes) -> bytes:
    """A compressed iTXt value, inflated to at most MAX_TEXT_BYTES (zlib.error past it: not decoded).
    `zlib.decompress`'s bufsize is only a starting size, not a limit."""
    inflater = zlib.decompressobj()
    raw = inflater.decompress(compressed, MAX_TEXT_BYTES)
    if inflater.unconsumed_tail:
        raise zlib.error(f"compressed text inflates past {MAX_TEXT_BYTES} bytes")
    return raw


def _png_text(data: bytes) -> dict[str, str]:
    fields: dict[str, str] = {}
    position = len(PNG_SIGNATURE)
    while position + 8 <= len(data):
        (length,) = struct.unpack(">I", data[position : position + 4])
        kind = data[position + 4 : position + 8]
        body = data[position + 8 : position + 8 + length]
        position += 12 + length  # length, type, data, CRC
        if kind == b"IEND" or len(body) != length:
            break
        if length > MAX_TEXT_BYTES:
            continue
        if kind == b"tEXt" and b"\x00" in body:
            keyword, _, text = body.partition(b"\x00")
            fields[keyword.decode("latin-1")] = text.decode("latin-1")
        elif kind == b"iTXt" and b"\x00" in body:
            keyword, _, rest = body.partition(b"\x00")
            if len(rest) < 2:
                continue
            compressed, rest = rest[0], rest[2:]
            _language, _, rest = rest.partition(b"\x00")
            _translated, _, text = rest.partition(b"\x00")
            try:
                raw = _inflate(text) if compressed else text
                fields[keyword.decode("latin-1")] = raw.decode("utf-8")
            except (zlib.error, UnicodeDecodeError):
                continue
    return fields


def embedded_provenance(data: bytes) -> dict[str, str]:
    """The `catalogan:` fields a PNG or WebP file states, without the prefix (empty when it states none)."""
    if data.startswith(PNG_SIGNATURE):
        fields = {
            key[len(PREFIX) :]: value for key, value in _png_text(data).items() if key.startswith(PREFIX)
        }
        if fields:
            return fields
    # WebP (and any file with only an XMP packet): the packet's attributes.
    start = data.find(b"<x:xmpmeta")
    end = data.find(b"</x:xmpmeta>", start)
    if start < 0 or end < 0 or end - start > MAX_TEXT_BYTES:
        return {}
    packet = data[start:end].decode("utf-8", errors="replace")
    return {name: unescape(value) for name, value in _XMP_ATTRIBUTE.findall(packet)}
