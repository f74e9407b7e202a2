"""Reading the provenance a delivered file carries about itself, without Pillow or torch.

Workers write it (`workers.encoding.Provenance`) as one PNG `iTXt` chunk per `catalogan:<field>` plus an XMP
packet, or, for lossless WebP, as the XMP packet only (its `catalogan:<field>="..."` attributes). Fields
include model version, checkpoint sha256, job id, index, seed, category, SKU, redraw and — when the worker
recorded how it computed the pixels — `backend`, `device_kind`, `dtype`, `compute_batch`.
"""

from __future__ import annotations

import re
from html import unescape

from db.png_text import PNG_SIGNATURE, PngChunkError, PngTextTooLongError, png_chunks, text_chunk

PREFIX = "catalogan:"
MAX_TEXT_BYTES = 1 << 20  # a text chunk larger than this is not decoded
_XMP_ATTRIBUTE = re.compile(r'catalogan:([A-Za-z0-9_]+)="([^"]*)"')


def _png_text(data: bytes) -> dict[str, str]:
    """The `catalogan:` text fields of a PNG, by `db.png_text`'s chunk walk. Lenient, as a page should be: a
    field that does not decode or inflates past MAX_TEXT_BYTES is skipped, and a damaged file gives the fields
    read before the damage."""
    fields: dict[str, str] = {}
    try:
        for kind, body in png_chunks(data):
            try:
                field = text_chunk(kind, body, MAX_TEXT_BYTES, _is_ours)
            except (PngChunkError, PngTextTooLongError):
                continue
            if field is not None:
                fields[field[0]] = field[1]
    except PngChunkError:
        pass
    return fields


def _is_ours(keyword: str) -> bool:
    return keyword.startswith(PREFIX)


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
