"""Verifying a delivered file: read its provenance back and, optionally, recompute it from the registry.

A catalogan file says what made it (`workers.encoding.Provenance`): model version, checkpoint SHA-256, job,
index, seed, category, SKU, redraw, and the IPTC digital source type `trainedAlgorithmicMedia`. Because an
image is a pure function of (model version, seed, index, category, redraw) and the encoders are
deterministic, the exact bytes can be recomputed: `verify_file(..., regenerate=True)` resolves the model
version in the registry (SQL row + checkpoint in the object store, loaded through the same `GeneratorCache`
the worker uses), renders the pixels with `workers.pixels.render_pixels`, re-encodes them with
`workers.encoding.encode_image` and compares bytes and pixels. One changed pixel, an edited text chunk or a
different checkpoint makes it "not matching".

Bit-for-bit equality holds on the same kind of device the worker used: CPU (float32) and CUDA (bf16
autocast) give slightly different pixels, so regenerate GPU-made files with `device="cuda"`.
"""

from __future__ import annotations

import hashlib
import io
import xml.etree.ElementTree as ElementTree
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from PIL import Image as PILImage
from PIL import UnidentifiedImageError
from sqlalchemy.orm import Session, sessionmaker

from db.errors import NotFoundError
from db.job_specs import split_model_ref
from db.model_versions import get_model_version
from workers.encoding import IPTC_TRAINED_ALGORITHMIC_MEDIA, Provenance, encode_image
from workers.errors import ProvenanceError
from workers.generator_cache import GeneratorCache
from workers.pixels import render_pixels

CATALOGAN_NS = "https://catalogan.dev/ns/1.0/"
IPTC_EXT_NS = "http://iptc.org/std/Iptc4xmpExt/2008-02-29/"
RDF_NS = "http://www.w3.org/1999/02/22-rdf-syntax-ns#"
XMP_TEXT_KEY = "XML:com.adobe.xmp"
FORMATS = {"PNG": "png", "WEBP": "webp"}
REQUIRED_FIELDS = ("model_version", "checkpoint_sha256", "job_id", "index", "seed", "category")


@dataclass(frozen=True, slots=True)
class FileProvenance:
    """What a file says about itself: its provenance, format and IPTC digital source type."""

    provenance: Provenance
    output_format: str
    digital_source_type: str


@dataclass(frozen=True, slots=True)
class VerificationReport:
    """The outcome of verifying one file (`matches` is None when it was not regenerated)."""

    file_sha256: str
    output_format: str
    digital_source_type: str
    provenance: dict[str, Any]
    regenerated: bool
    matches: bool | None = None
    pixels_match: bool | None = None
    differing_pixels: int | None = None
    regenerated_sha256: str | None = None
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The report as a JSON-ready dict."""
        return asdict(self)


def _xmp_fields(xmp: str | bytes) -> dict[str, str]:
    """`catalogan:*` and the IPTC DigitalSourceType attributes of an XMP packet's rdf:Description."""
    text = xmp.decode("utf-8", "replace") if isinstance(xmp, bytes) else xmp
    start, end = text.find("<x:xmpmeta"), text.rfind("</x:xmpmeta>")
    if start < 0 or end < 0:
        return {}
    try:
        root = ElementTree.fromstring(text[start : end + len("</x:xmpmeta>")])
    except ElementTree.ParseError:
        return {}
    fields: dict[str, str] = {}
    for description in root.iter(f"{{{RDF_NS}}}Description"):
        for name, value in description.attrib.items():
            if name.startswith(f"{{{CATALOGAN_NS}}}"):
                fields[name.split("}", 1)[1]] = value
            elif name == f"{{{IPTC_EXT_NS}}}DigitalSourceType":
                fields["DigitalSourceType"] = value
    return fields


def _int_field(fields: dict[str, str], name: str) -> int:
    try:
        return int(fields[name])
    except ValueError as exc:
        raise ProvenanceError(f"provenance field {name!r}: {fields[name]!r} is not an integer") from exc


def read_provenance(data: bytes) -> FileProvenance:
    """The provenance a PNG or WebP file carries; `ProvenanceError` when it is not an image or has none.

    PNG: the `catalogan:*` text chunks (the XMP packet fills in what they lack); WebP: the XMP packet.
    """
    try:
        image = PILImage.open(io.BytesIO(data))
    except UnidentifiedImageError as exc:
        raise ProvenanceError("not a PNG or WebP image") from exc
    output_format = FORMATS.get(str(image.format))
    if output_format is None:
        raise ProvenanceError(f"format {image.format}: catalogan writes PNG or WebP only")
    text: dict[str, str] = dict(getattr(image, "text", {}) or {})
    xmp = text.get(XMP_TEXT_KEY) or image.info.get("xmp") or image.info.get(XMP_TEXT_KEY) or ""
    fields = _xmp_fields(xmp)
    fields.update(
        {key.split(":", 1)[1]: value for key, value in text.items() if key.startswith("catalogan:")}
    )
    missing = [name for name in REQUIRED_FIELDS if name not in fields]
    if missing:
        what = (
            "no catalogan provenance (metadata stripped?)"
            if len(missing) == len(REQUIRED_FIELDS)
            else (f"incomplete provenance: missing {', '.join(missing)}")
        )
        raise ProvenanceError(f"the file carries {what}")
    provenance = Provenance(
        model_version=fields["model_version"],
        checkpoint_sha256=fields["checkpoint_sha256"],
        job_id=fields["job_id"],
        index=_int_field(fields, "index"),
        seed=_int_field(fields, "seed"),
        category=fields["category"],
        sku=fields.get("sku"),
        redraw=_int_field(fields, "redraw") if "redraw" in fields else 0,
    )
    return FileProvenance(provenance, output_format, fields.get("DigitalSourceType", ""))


def _decode_pixels(data: bytes) -> np.ndarray | None:
    """Pixels of an encoded image as uint8 (H, W, C), the layout `render_pixels` returns; None if undecodable."""
    try:
        array = np.asarray(PILImage.open(io.BytesIO(data)))
    except (OSError, ValueError):  # a damaged image: its pixels cannot match anything
        return None
    return array[:, :, None] if array.ndim == 2 else array


def regenerate_file(
    claimed: FileProvenance, *, session_factory: sessionmaker[Session], generators: GeneratorCache
) -> tuple[bytes, np.ndarray]:
    """Recompute a file's bytes and pixels from the registry, exactly as the worker made them.

    The job identity (job, index, seed, category, SKU, redraw) comes from the file; the model version and
    its checkpoint come from the registry. Raises `NotFoundError` (unknown model version) or
    `ProvenanceError` (a category the model version does not have).
    """
    stated = claimed.provenance
    name, version = split_model_ref(stated.model_version)
    if version is None:
        raise ProvenanceError(f"model_version {stated.model_version!r}: must be name@version")
    with session_factory() as session:
        model_version = get_model_version(session, name, version)
        session.expunge(model_version)
    categories = [str(category) for category in model_version.categories]
    if stated.category not in categories:
        raise ProvenanceError(f"category {stated.category!r} is not a category of {stated.model_version}")
    generator = generators.get(model_version)
    pixels = render_pixels(
        generator, stated.seed, categories.index(stated.category), [stated.index], redraws=[stated.redraw]
    )[0]  # (H, W, C)
    provenance = Provenance(
        model_version=f"{model_version.name}@{model_version.version}",
        checkpoint_sha256=model_version.checkpoint_sha256 or generator.checkpoint_sha256,
        job_id=stated.job_id,
        index=stated.index,
        seed=stated.seed,
        category=stated.category,
        sku=stated.sku,
        redraw=stated.redraw,
    )
    return encode_image(pixels, claimed.output_format, provenance), pixels


def _mismatch_reason(claimed: FileProvenance, regenerated: bytes, pixels_match: bool, differing: int) -> str:
    if not pixels_match:
        return f"{differing} pixel(s) differ from the image the model version produces"
    stated = read_provenance(regenerated).provenance
    if stated.checkpoint_sha256 != claimed.provenance.checkpoint_sha256:
        return "the checkpoint sha256 in the file is not the registered one"
    return "the pixels match but the file's bytes (metadata or encoding) differ"


def verify_file(
    data: bytes,
    *,
    regenerate: bool = False,
    session_factory: sessionmaker[Session] | None = None,
    generators: GeneratorCache | None = None,
) -> VerificationReport:
    """Read a file's provenance and, with `regenerate`, recompute it and compare bit for bit.

    Raises `ProvenanceError` when the file carries no readable provenance, `NotFoundError` when its model
    version is not in the registry. A file that differs is a report with `matches=False`, not an error.
    """
    claimed = read_provenance(data)
    report: dict[str, Any] = {
        "file_sha256": hashlib.sha256(data).hexdigest(),
        "output_format": claimed.output_format,
        "digital_source_type": claimed.digital_source_type,
        "provenance": asdict(claimed.provenance),
        "regenerated": regenerate,
    }
    if claimed.digital_source_type != IPTC_TRAINED_ALGORITHMIC_MEDIA:
        raise ProvenanceError("the file lacks the IPTC DigitalSourceType trainedAlgorithmicMedia")
    if not regenerate:
        return VerificationReport(**report)
    if session_factory is None or generators is None:
        raise ValueError("regenerate needs a session factory and a generator cache")
    try:
        expected, pixels = regenerate_file(claimed, session_factory=session_factory, generators=generators)
    except NotFoundError as exc:
        raise NotFoundError(
            f"{exc} (the file names model version {claimed.provenance.model_version})"
        ) from exc
    actual = _decode_pixels(data)
    # WebP has no grey mode: a grey image decodes as RGB with equal channels, compared against the grey value.
    same_shape = (
        actual is not None
        and actual.shape[:2] == pixels.shape[:2]
        and pixels.shape[2] in (1, actual.shape[2])
    )
    differing = int(np.any(actual != pixels, axis=-1).sum()) if same_shape else int(np.prod(pixels.shape[:2]))
    pixels_match = same_shape and differing == 0
    matches = expected == data
    return VerificationReport(
        **report,
        matches=matches,
        pixels_match=pixels_match,
        differing_pixels=differing,
        regenerated_sha256=hashlib.sha256(expected).hexdigest(),
        reason=None if matches else _mismatch_reason(claimed, expected, pixels_match, differing),
    )
