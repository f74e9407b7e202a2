"""Image files with provenance: PNG (text chunks + XMP) and lossless WebP (XMP), deterministic bytes.

Every file says what made it: model version, checkpoint SHA-256, job id, index, seed, category, SKU, an
"AI-generated" marker, and the IPTC digital source type `trainedAlgorithmicMedia` in an XMP packet (the
field C2PA-aware tools and search engines read). No timestamps and no encoder-version strings go in, so
the same pixels and provenance always give the same bytes.
"""

from __future__ import annotations

import hashlib
import io
import struct
import zlib
from dataclasses import dataclass
from functools import lru_cache
from xml.sax.saxutils import quoteattr

import numpy as np
from PIL import Image as PILImage

IPTC_TRAINED_ALGORITHMIC_MEDIA = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
AI_GENERATED_MARKER = "AI-generated"
SOFTWARE = "catalogan"
# zlib level 6 is Pillow's default; fixed here so a Pillow default change cannot change our bytes.
PNG_COMPRESS_LEVEL = 6
WEBP_METHOD = 4


@dataclass(frozen=True, slots=True)
class Provenance:
    """What generated one image; written into the file."""

    model_version: str  # "name@version"
    checkpoint_sha256: str
    job_id: str
    index: int
    seed: int
    category: str
    sku: str | None
    redraw: int = 0  # > 0 when a quality gate redrew the image from sub-seed (seed, index, redraw)
    # How the pixels were computed (`models.inference.InferenceSpec.to_fields`: backend, device_kind, dtype,
    # compute_batch), so `verify --regenerate` recomputes them the same way.
    inference: tuple[tuple[str, str], ...] = ()
    # The latent recipe (`db.latent_control.provenance_fields`: truncation, variation_of, strength,
    # interpolation, frame, latent_control); () for a plain job, whose bytes stay as they were.
    control: tuple[tuple[str, str], ...] = ()

    def text_fields(self) -> dict[str, str]:
        """The provenance as ordered key → text pairs (the PNG text chunks)."""
        fields = {
            "Software": SOFTWARE,
            "catalogan:ai_generated": AI_GENERATED_MARKER,
            "catalogan:model_version": self.model_version,
            "catalogan:checkpoint_sha256": self.checkpoint_sha256,
            "catalogan:job_id": self.job_id,
            "catalogan:index": str(self.index),
            "catalogan:seed": str(self.seed),
            "catalogan:category": self.category,
        }
        if self.sku is not None:
            fields["catalogan:sku"] = self.sku
        if self.redraw:  # written only when redrawn, so first draws keep their bytes
            fields["catalogan:redraw"] = str(self.redraw)
        for name, value in self.inference:
            fields[f"catalogan:{name}"] = value
        for name, value in self.control:
            fields[f"catalogan:{name}"] = value
        return fields


@lru_cache(maxsize=4096)
def _xmp_attribute(name: str, value: str) -> str:
    """One `catalogan:` attribute line of the XMP packet (cached: most values repeat within a job)."""
    return f"\n    catalogan:{name.split(':', 1)[1]}={quoteattr(value)}"


def xmp_packet(provenance: Provenance) -> bytes:
    """An XMP packet with the IPTC DigitalSourceType and the catalogan fields (no dates, stable order)."""
    attributes = "".join(
        _xmp_attribute(name, value)
        for name, value in provenance.text_fields().items()
        if name.startswith("catalogan:")
    )
    xml = (
        '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>\n'
        '<x:xmpmeta xmlns:x="adobe:ns:meta/">\n'
        ' <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">\n'
        '  <rdf:Description rdf:about=""\n'
        '    xmlns:Iptc4xmpExt="http://iptc.org/std/Iptc4xmpExt/2008-02-29/"\n'
        '    xmlns:catalogan="https://catalogan.dev/ns/1.0/"\n'
        f"    Iptc4xmpExt:DigitalSourceType={quoteattr(IPTC_TRAINED_ALGORITHMIC_MEDIA)}{attributes}/>\n"
        " </rdf:RDF>\n"
        "</x:xmpmeta>\n"
        '<?xpacket end="r"?>'
    )
    return xml.encode("utf-8")


def to_pil(pixels: np.ndarray) -> PILImage.Image:
    """A Pillow image from uint8 pixels shaped (H, W, 1) grey or (H, W, 3) RGB."""
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] not in (1, 3):
        raise ValueError(f"pixels: need uint8 (H, W, 1|3), got {pixels.dtype} {pixels.shape}")
    if pixels.shape[2] == 1:
        return PILImage.fromarray(np.ascontiguousarray(pixels[:, :, 0]), mode="L")
    return PILImage.fromarray(np.ascontiguousarray(pixels), mode="RGB")


XMP_PNG_KEYWORD = "XML:com.adobe.xmp"
_PNG_SIGNATURE_AND_IHDR = 8 + 4 + 4 + 13 + 4  # signature, then IHDR: length, type, 13 bytes, CRC


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


@lru_cache(maxsize=4096)
def _itxt_chunk(keyword: str, text: str) -> bytes:
    """An uncompressed iTXt chunk (no language tag, no translated keyword), as Pillow's `add_itxt` writes it.

    Cached: within a job most provenance fields repeat for every image.
    """
    return _png_chunk(b"iTXt", keyword.encode("latin-1") + b"\x00\x00\x00\x00\x00" + text.encode("utf-8"))


def provenance_chunks(provenance: Provenance) -> bytes:
    """The PNG iTXt chunks of the provenance: one per text field, then the XMP packet."""
    fields = provenance.text_fields()
    return b"".join(_itxt_chunk(key, value) for key, value in fields.items()) + _png_chunk(
        b"iTXt",
        XMP_PNG_KEYWORD.encode("latin-1") + b"\x00\x00\x00\x00\x00" + xmp_packet(provenance),
    )


def encode_png(pixels: np.ndarray, provenance: Provenance) -> bytes:
    """PNG bytes with the provenance chunks right after IHDR, where Pillow puts `pnginfo` text chunks.

    Pillow encodes the pixels (IHDR, IDAT, IEND); the text chunks are spliced in here instead of going through
    `PngInfo`, whose per-chunk Python overhead cost more than the compression itself. The bytes are exactly
    those of `image.save(..., pnginfo=...)` with the same chunks (a test compares them).
    """
    buffer = io.BytesIO()
    to_pil(pixels).save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL, optimize=False)
    plain = buffer.getbuffer()
    if plain[12:16] != b"IHDR":
        raise ValueError("Pillow wrote a PNG that does not start with IHDR")
    head = _PNG_SIGNATURE_AND_IHDR
    return b"".join((plain[:head], provenance_chunks(provenance), plain[head:]))


def encode_image(pixels: np.ndarray, output_format: str, provenance: Provenance) -> bytes:
    """Encode one image as PNG or lossless WebP with provenance; the same inputs give the same bytes."""
    if output_format == "png":
        return encode_png(pixels, provenance)
    image = to_pil(pixels)
    buffer = io.BytesIO()
    if output_format == "webp":
        image.save(
            buffer,
            format="WEBP",
            lossless=True,
            quality=100,
            method=WEBP_METHOD,
            exact=True,
            xmp=xmp_packet(provenance),
        )
    else:
        raise ValueError(f"output_format {output_format!r}: must be png or webp")
    return buffer.getvalue()


@dataclass(frozen=True, slots=True)
class EncodedImage:
    """Encoded bytes with what the image row records."""

    data: bytes
    sha256: str
    width: int
    height: int


def encode_with_digest(pixels: np.ndarray, output_format: str, provenance: Provenance) -> EncodedImage:
    """Encode and hash one image (the row's sha256 is the hash of exactly the uploaded bytes)."""
    data = encode_image(pixels, output_format, provenance)
    height, width = int(pixels.shape[0]), int(pixels.shape[1])
    return EncodedImage(data, hashlib.sha256(data).hexdigest(), width, height)
