"""Verifying a delivered file: read its provenance back and, optionally, recompute it from the registry.

A catalogan file says what made it (`workers.encoding.Provenance`): model version, checkpoint SHA-256, job,
index, seed, category, SKU, redraw, and the IPTC digital source type `trainedAlgorithmicMedia`. Because an
image is a pure function of (model version, seed, index, category, redraw) and the encoders are
deterministic, the exact bytes can be recomputed: `verify_file(..., regenerate=True)` resolves the model
version in the registry (SQL row + checkpoint in the object store, loaded through the same `GeneratorCache`
the worker uses), renders the pixels with `workers.pixels.render_pixels`, re-encodes them with
`workers.encoding.encode_image` and compares bytes and pixels. One changed pixel, an edited text chunk or a
different checkpoint makes it "not matching".

Scope of exact regeneration. The file also records how its pixels were computed (`models.inference.InferenceSpec`:
inference backend, device kind, dtype, compute batch, graph), and regeneration loads the generator with that
same spec. Bytes are equal for the same model version and spec (measured on CPU: 2,000 of 2,000 files of the
shipped model, `tests/workers/test_verification.py`). Another device kind, backend or graph (a CUDA bf16
image regenerated on a CPU, a file made with a backend this machine lacks, or `backend=` / `graph=` asked for
another one) can differ by a grey level without any tampering: such a difference is reported as `different
device` / `different backend` / `different graph` (`comparable=False`, exit 9 in the CLI), never as
tampering. A file written before the spec was recorded is regenerated with the default CPU spec.

Hostile files. Every bound is checked before the work it bounds: the file's size before it is read
(`read_image_file`, `MAX_FILE_BYTES`), the width and height its header declares before anything is decoded
(`MAX_IMAGE_SIDE_PX`: a larger image is not a catalogan image), and a PNG's text chunks are read by walking its
chunks (`MAX_TEXT_BYTES` of provenance text at most), never by decoding its pixels. Pillow decodes pixels only
for `--regenerate`, of a file whose header passed those bounds.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import struct
import xml.etree.ElementTree as ElementTree
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image as PILImage
from PIL import UnidentifiedImageError
from PIL.Image import DecompressionBombError, DecompressionBombWarning
from sqlalchemy.orm import Session, sessionmaker

from db.errors import NotFoundError
from db.job_specs import split_model_ref
from db.latent_control import parse_control, provenance_fields
from db.model_versions import get_model_version
from db.png_text import PNG_SIGNATURE, PngChunkError, PngTextTooLongError, png_chunks, text_chunk
from models.inference import BACKENDS, GRAPHS, PLAIN, InferenceSpec, default_spec, describe_fields
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
INFERENCE_FIELDS = ("backend", "device_kind", "dtype", "compute_batch")
# Written only when not plain (`InferenceSpec.to_fields`): a file without it was computed by the plain graph.
OPTIONAL_INFERENCE_FIELDS = ("graph",)
# The latent recipe's fields (`db.latent_control.provenance_fields`); `latent_control` is the one regenerated from.
CONTROL_FIELDS = ("truncation", "variation_of", "strength", "interpolation", "frame", "latent_control")
# What PIL raises for a truncated or corrupt file it recognised ("Truncated File Read", "broken PNG file", ...),
# and its decompression-bomb error (and warning, where warnings are errors): a damaged file, not a crash.
DAMAGED_IMAGE_ERRORS = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    DecompressionBombError,
    DecompressionBombWarning,
)
# The largest width or height verify reads: 16x the largest preset's resolution (photo-cgan-64, 64 px), so a
# model trained at a larger power of two still verifies; a test holds every preset to it. Decoding an image this
# size takes at most 4 MiB (RGBA).
MAX_IMAGE_SIDE_PX = 1024
# The largest file verify reads: a MAX_IMAGE_SIDE_PX square RGB image stored without any compression is 3 MiB,
# its provenance a few KiB (the shipped model writes about 1.5 KiB PNGs; photo-cgan-64 about 13 KiB).
MAX_FILE_BYTES = 8 * 1024 * 1024
# Provenance text kept from a PNG's chunks, in all (catalogan's is about 2 KiB, XMP packet included).
MAX_TEXT_BYTES = 1024 * 1024


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
    # False when the regeneration ran with another backend, device kind, dtype, compute batch or graph than the
    # file records: a difference then proves nothing either way (`reason` says which).
    comparable: bool | None = None
    regenerated_with: str | None = None  # "eager on cpu, fp32, compute batch 8"
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


def _damaged(what: object) -> ProvenanceError:
    return ProvenanceError(f"a truncated or corrupt image ({what})")


def _check_file_bytes(size: int) -> None:
    """Refuse a file larger than any catalogan file, by its size alone."""
    if size > MAX_FILE_BYTES:
        raise ProvenanceError(
            f"not a catalogan image: {size:,} bytes, more than any catalogan file ({MAX_FILE_BYTES:,} at most)"
        )


def _check_side(width: int, height: int) -> None:
    """Refuse an image larger than any catalogan model makes, from the size its header declares."""
    if not 0 < width <= MAX_IMAGE_SIDE_PX or not 0 < height <= MAX_IMAGE_SIDE_PX:
        raise ProvenanceError(
            f"not a catalogan image: {width}×{height} px declared, catalogan images are at most "
            f"{MAX_IMAGE_SIDE_PX}×{MAX_IMAGE_SIDE_PX}"
        )


def read_image_file(path: Path) -> bytes:
    """The bytes of a file to verify; `ProvenanceError` for one larger than `MAX_FILE_BYTES`, before it is read.

    The size is checked with `stat`, and the read stops one byte past the cap (a file that grew since, or a
    device or pipe whose size `stat` does not say).
    """
    _check_file_bytes(path.stat().st_size)
    with path.open("rb") as handle:
        data = handle.read(MAX_FILE_BYTES + 1)
    _check_file_bytes(len(data))
    return data


def _declared_size(data: bytes) -> tuple[int, int] | None:
    """The (width, height) a PNG's IHDR or a WebP's first chunk declares, read without Pillow; None if neither.

    The WebP cases are those Pillow's `WebPImagePlugin._get_size` reads (VP8 lossy, VP8L lossless, VP8X).
    """
    if data.startswith(PNG_SIGNATURE) and data[12:16] == b"IHDR" and len(data) >= 24:
        width, height = struct.unpack_from(">II", data, 16)
        return int(width), int(height)
    if not (data[:4] == b"RIFF" and data[8:12] == b"WEBP") or len(data) < 30:
        return None
    chunk = data[12:16]
    if chunk == b"VP8 " and data[23:26] == b"\x9d\x01\x2a":
        width, height = struct.unpack_from("<HH", data, 26)
        return width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8X":
        return int.from_bytes(data[24:27], "little") + 1, int.from_bytes(data[27:30], "little") + 1
    if chunk == b"VP8L" and data[20] == 0x2F:
        (bits,) = struct.unpack_from("<I", data, 21)
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    return None


def _open_image(data: bytes) -> PILImage.Image:
    """Pillow's view of a PNG or WebP's header (nothing decoded), its size checked before and after opening.

    `ProvenanceError` for a file that is not a PNG or WebP, is damaged, or declares more than
    `MAX_IMAGE_SIDE_PX`. Pillow is asked for those two formats only, and opens only files whose header size
    passed, so its bomb check (a warning past 89 Mpx, an error past twice that) never fires on a file we read.
    """
    _check_file_bytes(len(data))
    declared = _declared_size(data)
    if declared is not None:
        _check_side(*declared)
    try:
        image = PILImage.open(io.BytesIO(data), formats=tuple(FORMATS))
    except UnidentifiedImageError as exc:
        raise ProvenanceError("not a PNG or WebP image") from exc
    except DAMAGED_IMAGE_ERRORS as exc:
        raise _damaged(exc) from exc
    _check_side(*image.size)
    return image


def _png_text_fields(data: bytes) -> dict[str, str]:
    """The provenance text chunks of a PNG, wherever they are (catalogan writes them before IDAT), read by
    walking its chunks: the declared size is checked first, and no pixel data is decompressed."""
    too_much = f"not a catalogan image: over {MAX_TEXT_BYTES:,} bytes of provenance text"
    text: dict[str, str] = {}
    budget = MAX_TEXT_BYTES
    try:
        chunks = png_chunks(data)
        kind, header = next(chunks)
        if kind != b"IHDR" or len(header) != 13:
            raise _damaged("no IHDR chunk first")
        _check_side(*struct.unpack_from(">II", header))
        for kind, body in chunks:
            field = text_chunk(kind, body, budget, _is_provenance_keyword)
            if field is None:
                continue
            budget -= len(field[1])
            if budget < 0:
                raise ProvenanceError(too_much)
            text[field[0]] = field[1]  # a later chunk wins, as in Pillow's `image.text`
    except PngChunkError as exc:
        raise _damaged(exc) from exc
    except PngTextTooLongError as exc:
        raise ProvenanceError(too_much) from exc
    return text


def _is_provenance_keyword(keyword: str) -> bool:
    return keyword.startswith("catalogan:") or keyword == XMP_TEXT_KEY


def read_provenance(data: bytes) -> FileProvenance:
    """The provenance a PNG or WebP file carries; `ProvenanceError` when it is not an image or has none.

    PNG: the `catalogan:*` text chunks (the XMP packet fills in what they lack); WebP: the XMP packet. Nothing
    is decoded: a file larger than `MAX_FILE_BYTES` or declaring more than `MAX_IMAGE_SIDE_PX` is refused as
    not a catalogan image, a cut or damaged one as truncated or corrupt.
    """
    _check_file_bytes(len(data))
    if data.startswith(PNG_SIGNATURE):
        output_format = "png"
        text = _png_text_fields(data)
        xmp: str | bytes = text.get(XMP_TEXT_KEY, "")
    else:
        image = _open_image(data)
        output_format = FORMATS[str(image.format)]
        text = {}
        xmp = image.info.get("xmp") or image.info.get(XMP_TEXT_KEY) or ""
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
        inference=tuple(
            (name, fields[name]) for name in INFERENCE_FIELDS + OPTIONAL_INFERENCE_FIELDS if name in fields
        ),
        control=tuple((name, fields[name]) for name in CONTROL_FIELDS if name in fields),
    )
    return FileProvenance(provenance, output_format, fields.get("DigitalSourceType", ""))


def _decode_pixels(data: bytes) -> np.ndarray | None:
    """Pixels of an encoded image as uint8 (H, W, C), the layout `render_pixels` returns; None if undecodable.

    Decoded only once `_open_image` has checked the declared size (at most `MAX_IMAGE_SIDE_PX` square).
    """
    try:
        array = np.asarray(_open_image(data))
    except (ProvenanceError, *DAMAGED_IMAGE_ERRORS):  # a damaged image: its pixels cannot match anything
        return None
    return array[:, :, None] if array.ndim == 2 else array


@dataclass(frozen=True, slots=True)
class Regenerated:
    """A file recomputed from the registry: its bytes and pixels, and how they were computed."""

    data: bytes
    pixels: np.ndarray  # (H, W, C) uint8
    regenerated_with: str  # `InferenceSpec.describe()` of the run
    comparable: bool  # the run used the spec the file records (or the file records none)
    difference: str | None  # "different backend" / "different device" / ... when not comparable


def _file_spec(claimed: FileProvenance) -> dict[str, str]:
    """The inference fields the file records ({} for a file written before they were recorded)."""
    fields = dict(claimed.provenance.inference)
    missing = [name for name in INFERENCE_FIELDS if name not in fields]
    if fields and missing:
        raise ProvenanceError(f"incomplete inference provenance: missing {', '.join(missing)}")
    return fields


def _wanted_spec(
    recorded: dict[str, str], device: str, backend: str | None, graph: str | None = None
) -> InferenceSpec:
    """The spec to regenerate with: the file's own on a device of its kind, else this device's default."""
    kind = torch.device(device).type
    recorded_graph = recorded.get(
        "graph", PLAIN
    )  # the file's graph where it is known, also on another device
    spec = default_spec(device, graph=recorded_graph if recorded_graph in GRAPHS else PLAIN)
    if recorded and recorded["device_kind"] == kind and recorded["backend"] in BACKENDS:
        try:
            spec = InferenceSpec.from_fields(recorded)
        except ValueError as exc:
            raise ProvenanceError(f"inference provenance: {exc}") from exc
    if backend is not None:
        spec = dataclasses.replace(spec, backend=backend)
    if graph is not None:
        spec = dataclasses.replace(spec, graph=graph)
    return spec


def _difference(recorded: dict[str, str], spec: InferenceSpec) -> str | None:
    """What differs between the file's spec and the run's, most telling first; None when nothing does."""
    if not recorded:
        return None
    used = spec.to_fields()
    for name, label in (
        ("device_kind", "different device"),
        ("backend", "different backend"),
        ("dtype", "different dtype"),
        ("compute_batch", "different compute batch"),
        ("graph", "different graph"),
    ):
        if recorded.get(name, PLAIN) != used.get(name, PLAIN):
            return label
    return None


def _recipe(claimed: FileProvenance) -> dict[str, Any] | None:
    """The latent recipe a file records (None: a plain image); `ProvenanceError` when it is malformed."""
    fields = dict(claimed.provenance.control)
    if not fields:
        return None
    if "latent_control" not in fields:
        raise ProvenanceError("incomplete latent provenance: missing latent_control")
    try:
        return parse_control(fields["latent_control"], index=claimed.provenance.index)
    except ValueError as exc:
        raise ProvenanceError(f"provenance field {exc}") from exc


def regenerate_file(
    claimed: FileProvenance,
    *,
    session_factory: sessionmaker[Session],
    generators: GeneratorCache,
    backend: str | None = None,
    graph: str | None = None,
) -> Regenerated:
    """Recompute a file's bytes and pixels from the registry, the way the worker made them.

    The job identity (job, index, seed, category, SKU, redraw) and the inference spec come from the file; the
    model version and its checkpoint come from the registry. The spec is the file's own when `generators`
    runs on a device of the kind the file names (and `backend` and `graph` are None); otherwise the device's
    default spec (with `backend` and `graph` when given) and the result says what differs. Raises
    `NotFoundError` (unknown model version) or `ProvenanceError` (a category the model version does not
    have, malformed inference fields).
    """
    stated = claimed.provenance
    try:
        name, version = split_model_ref(stated.model_version)
    except ValueError as exc:  # PlanningError: e.g. a version beyond 9 digits, which no registry holds
        raise ProvenanceError(f"provenance field 'model_version': {exc}") from exc
    if version is None:
        raise ProvenanceError(f"model_version {stated.model_version!r}: must be name@version")
    with session_factory() as session:
        model_version = get_model_version(session, name, version)
        session.expunge(model_version)
    categories = [str(category) for category in model_version.categories]
    if stated.category not in categories:
        raise ProvenanceError(f"category {stated.category!r} is not a category of {stated.model_version}")
    recorded = _file_spec(claimed)
    spec = _wanted_spec(recorded, generators.device, backend, graph)
    generator = generators.get(model_version, spec)
    recipe = _recipe(claimed)
    pixels = render_pixels(
        generator,
        stated.seed,
        categories.index(stated.category),
        [stated.index],
        redraws=[stated.redraw],
        control=recipe,
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
        # The file's claim, like its seed: a forged spec regenerates other pixels and fails.
        inference=stated.inference,
        # Rewritten from the recipe: a readable field edited to disagree with it changes the bytes.
        control=provenance_fields(recipe, stated.index),
    )
    difference = _difference(recorded, spec)
    return Regenerated(
        encode_image(pixels, claimed.output_format, provenance),
        pixels,
        spec.describe(),
        difference is None,
        difference,
    )


def _mismatch_reason(
    claimed: FileProvenance, regenerated: Regenerated, pixels_match: bool, differing: int
) -> str:
    if not regenerated.comparable:
        recorded = describe_fields(dict(claimed.provenance.inference))
        what = str(regenerated.difference).removeprefix("different ")
        return (
            f"{regenerated.difference}: the file was made with {recorded}, regenerated with "
            f"{regenerated.regenerated_with}; {differing} pixel(s) differ, which another {what} alone can cause "
            "(not evidence of tampering): regenerate with the file's device kind, backend and graph to prove it"
        )
    if not pixels_match:
        return f"{differing} pixel(s) differ from the image the model version produces"
    stated = read_provenance(regenerated.data).provenance
    if stated.checkpoint_sha256 != claimed.provenance.checkpoint_sha256:
        return "the checkpoint sha256 in the file is not the registered one"
    return "the pixels match but the file's bytes (metadata or encoding) differ"


def verify_file(
    data: bytes,
    *,
    regenerate: bool = False,
    session_factory: sessionmaker[Session] | None = None,
    generators: GeneratorCache | None = None,
    backend: str | None = None,
    graph: str | None = None,
) -> VerificationReport:
    """Read a file's provenance and, with `regenerate`, recompute it and compare bit for bit.

    `backend` asks for another inference backend than the file records (the report then says "different
    backend" when the pixels differ), `graph` for another graph ("different graph"). Raises
    `ProvenanceError` when the file carries no readable provenance, `NotFoundError` when its model version
    is not in the registry. A file that differs is a report with
    `matches=False` (and `comparable=False` when the run could not reproduce the file's spec), not an error.
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
        regenerated = regenerate_file(
            claimed, session_factory=session_factory, generators=generators, backend=backend, graph=graph
        )
    except NotFoundError as exc:
        raise NotFoundError(
            f"{exc} (the file names model version {claimed.provenance.model_version})"
        ) from exc
    pixels = regenerated.pixels
    actual = _decode_pixels(data)
    # WebP has no grey mode: a grey image decodes as RGB with equal channels, compared against the grey value.
    same_shape = (
        actual is not None
        and actual.shape[:2] == pixels.shape[:2]
        and pixels.shape[2] in (1, actual.shape[2])
    )
    differing = int(np.any(actual != pixels, axis=-1).sum()) if same_shape else int(np.prod(pixels.shape[:2]))
    pixels_match = same_shape and differing == 0
    matches = regenerated.data == data
    return VerificationReport(
        **report,
        matches=matches,
        comparable=regenerated.comparable,
        regenerated_with=regenerated.regenerated_with,
        pixels_match=pixels_match,
        differing_pixels=differing,
        regenerated_sha256=hashlib.sha256(regenerated.data).hexdigest(),
        reason=None if matches else _mismatch_reason(claimed, regenerated, pixels_match, differing),
    )
