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
