"""Image files: deterministic bytes, pixels preserved, provenance and the IPTC marker in PNG and WebP."""

from __future__ import annotations

import io
from xml.etree import ElementTree

import numpy as np
import pytest
from PIL import Image as PILImage

from workers.encoding import IPTC_TRAINED_ALGORITHMIC_MEDIA, Provenance, encode_image, encode_with_digest

PROVENANCE = Provenance(
    model_version="fashion-cgan@3",
    checkpoint_sha256="ab" * 32,
    job_id="0123456789abcdef0123456789abcdef",
    index=42,
    seed=7,
    category="sneaker",
    sku='SKU "quoted" & <odd>',
)


@pytest.fixture
def pixels() -> np.ndarray:
    """A 28x28 RGB test pattern."""
    return np.random.default_rng(0).integers(0, 256, size=(28, 28, 3), dtype=np.uint8)


@pytest.mark.parametrize("output_format", ["png", "webp"])
def test_the_same_image_and_provenance_always_give_the_same_bytes_and_pixels(
    pixels: np.ndarray, output_format: str
) -> None:
    # Given one image and its provenance, when it is encoded twice
    first, second = (
        encode_image(pixels, output_format, PROVENANCE),
        encode_image(pixels, output_format, PROVENANCE),
    )
    # Then the bytes are identical and decoding gives the pixels back exactly (lossless)
    assert first == second
    decoded = np.asarray(PILImage.open(io.BytesIO(first)).convert("RGB"))
    assert np.array_equal(decoded, pixels)


def test_png_carries_provenance_text_chunks_and_the_iptc_source_type(pixels: np.ndarray) -> None:
    # Given an encoded PNG, when its text chunks are read
    text = PILImage.open(io.BytesIO(encode_image(pixels, "png", PROVENANCE))).text  # type: ignore[attr-defined]
    # Then every provenance field is there, with the AI-generated marker and the IPTC digital source type
    assert text["catalogan:model_version"] == "fashion-cgan@3"
    assert text["catalogan:checkpoint_sha256"] == "ab" * 32
    assert text["catalogan:job_id"] == PROVENANCE.job_id
    assert (text["catalogan:index"], text["catalogan:seed"]) == ("42", "7")
    assert (text["catalogan:category"], text["catalogan:sku"]) == ("sneaker", 'SKU "quoted" & <odd>')
    assert text["catalogan:ai_generated"] == "AI-generated"
    assert f'Iptc4xmpExt:DigitalSourceType="{IPTC_TRAINED_ALGORITHMIC_MEDIA}"' in text["XML:com.adobe.xmp"]
    # And the XMP is well-formed XML whose attributes give the values back (the SKU is escaped, not mangled)
    xmp = text["XML:com.adobe.xmp"]
    root = ElementTree.fromstring(
        xmp[xmp.index("<x:xmpmeta") : xmp.index("</x:xmpmeta>") + len("</x:xmpmeta>")]
    )
    description = next(root.iter("{http://www.w3.org/1999/02/22-rdf-syntax-ns#}Description"))
    assert description.get("{https://catalogan.dev/ns/1.0/}sku") == 'SKU "quoted" & <odd>'


def test_webp_carries_the_xmp_packet(pixels: np.ndarray) -> None:
    # Given an encoded WebP, when its XMP is read, then it holds the IPTC source type and the job id
    image = PILImage.open(io.BytesIO(encode_image(pixels, "webp", PROVENANCE)))
    xmp = image.info["xmp"]
    xmp = xmp.decode() if isinstance(xmp, bytes) else xmp
    assert IPTC_TRAINED_ALGORITHMIC_MEDIA in xmp and PROVENANCE.job_id in xmp


def test_grey_images_are_encoded_as_one_channel_and_hashed(pixels: np.ndarray) -> None:
    # Given a (H, W, 1) grey image, when it is encoded with its digest
    encoded = encode_with_digest(pixels[:, :, :1], "png", PROVENANCE)
    # Then the file is an 'L' image of the same size and the digest is the SHA-256 of the bytes
    import hashlib

    assert PILImage.open(io.BytesIO(encoded.data)).mode == "L"
    assert (encoded.width, encoded.height) == (28, 28)
    assert encoded.sha256 == hashlib.sha256(encoded.data).hexdigest()


def test_unsupported_inputs_are_refused(pixels: np.ndarray) -> None:
    # Given a float image or an unknown format, then encoding refuses with a message naming the problem
    with pytest.raises(ValueError, match="need uint8"):
        encode_image(pixels.astype(np.float32), "png", PROVENANCE)
    with pytest.raises(ValueError, match="must be png or webp"):
        encode_image(pixels, "gif", PROVENANCE)


def _pillow_png(pixels: np.ndarray, provenance: Provenance) -> bytes:
    """The reference: the same chunks written through Pillow's own `PngInfo` path."""
    from PIL.PngImagePlugin import PngInfo

    from workers.encoding import PNG_COMPRESS_LEVEL, XMP_PNG_KEYWORD, to_pil, xmp_packet

    info = PngInfo()
    for key, value in provenance.text_fields().items():
        info.add_itxt(key, value)
    info.add_itxt(XMP_PNG_KEYWORD, xmp_packet(provenance).decode("utf-8"))
    buffer = io.BytesIO()
    to_pil(pixels).save(buffer, format="PNG", pnginfo=info, compress_level=PNG_COMPRESS_LEVEL, optimize=False)
    return buffer.getvalue()


@pytest.mark.parametrize("channels", [1, 3])
def test_the_spliced_png_is_byte_identical_to_pillows_pnginfo_output(channels: int) -> None:
    # Given images of several sizes and provenances with and without SKU, redraw and non-ASCII text
    rng = np.random.default_rng(channels)
    for case in range(40):
        height, width = int(rng.integers(1, 70)), int(rng.integers(1, 70))
        pixels = rng.integers(0, 256, size=(height, width, channels), dtype=np.uint8)
        if case % 3 == 0:  # flat areas compress differently from noise
            pixels[: height // 2] = 17
        provenance = Provenance(
            model_version=f"fashion-cgan@{case}",
            checkpoint_sha256="cd" * 32,
            job_id=f"{case:032x}",
            index=case * 1013,
            seed=case,
            category=["sneaker", "T-shirt/top", "bag"][case % 3],
            sku=None if case % 2 else f"SKU-{case} «grün» & <x>",
            redraw=case % 4,
        )
        # When it is encoded by catalogan's PNG path and by Pillow's PngInfo path
        # Then the bytes are identical
        assert encode_image(pixels, "png", provenance) == _pillow_png(pixels, provenance), case
