"""Previews: the worker side of `POST /v1/previews` (task `catalogan.generate_preview`, `interactive` queue).

The API sends one JSON argument

    {"preview_id", "tenant_id", "model_version_id", "category", "class_index", "count", "seed", "truncation",
     "key_prefix"}

and polls `<key_prefix>/result.json`. This module writes `<key_prefix>/00.png` … then, LAST, the result:

    {"images": [{"index": 0, "category": "dress", "key": "<key_prefix>/00.png", "sha256": "..."}]}
    or {"error": "..."}

`truncation` (ψ) came later: a request without it, from an older API, is rendered with ψ 1.0 (off).

Guarantees:
- `key_prefix` must be exactly `<tenant_id>/previews/<preview_id>` (ids being single path segments); any
  other request is refused and nothing is written under the prefix it named. When the two ids are safe, the
  refusal is still answered as `{"error": ...}` at the canonical prefix; otherwise it is only logged.
- every other failure (bad count, a ψ a job could not have, unknown model version, category mismatch,
  checkpoint or generation error) is answered as an `{"error": ...}` result file: the API answers 503 with
  it, never a silent timeout.
- pixels: image `i` goes through `workers.pixels.render_pixels(generator, seed, class_index, [0..count),
  control=recipe)`, the very call a chunk makes, with the recipe a job with this ψ stores
  (`db.latent_control.truncation_recipe`: None at ψ 1.0), so its pixels equal those of image index `i` of a
  job with the same seed, ψ and model version whose image `i` is of this category (the first item of a job
  starts at index 0) and that the job's quality gate accepted at its first draw (previews are not gated; a
  redrawn job image differs).
- files: PNGs encoded by `workers.encoding.encode_with_digest` with the same provenance fields as a job's
  (the recipe's `truncation` and `latent_control` included when ψ != 1.0), `job_id` being the constant
  `preview`: the bytes differ from the job's PNG only in that field (and `sku`, for an item with one), and
  two previews with the same model version, category, seed and ψ give byte-identical files (same sha256).
- devices: the generator computes in fixed, padded compute blocks (`models.inference`), so a preview's one
  batch of `count` images gives the pixels a chunk's batches give, on the same inference spec (backend,
  device kind, dtype); "equal" is tested on CPU workers. A CUDA worker (bf16) and a CPU worker may differ by
  a grey level; not measured on a GPU.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from db.images import CONTENT_TYPES
from db.job_specs import MAX_TRUNCATION, MIN_TRUNCATION
from db.latent_control import provenance_fields, truncation_recipe
from db.storage import ObjectStore
from db.tables import ModelVersion
from workers.encoding import Provenance, encode_with_digest
from workers.errors import PreviewRequestError
from workers.generator_cache import GeneratorCache
from workers.pixels import inference_fields, render_pixels

logger = logging.getLogger(__name__)

RESULT_NAME = "result.json"
PREVIEW_FORMAT = "png"
MAX_PREVIEW_IMAGES = 8
MAX_SEED = 2**63 - 1  # the API's bound (scheduler.api.schemas.MAX_SEED)
# Provenance job_id of every preview image: not a job, and the same for every preview, so the same
# (model version, seed, category, index) always gives the same file bytes and sha256.
PREVIEW_JOB_ID = "preview"
# One path segment: no "/", no "..", nothing a store could read as a different key.
_SEGMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


@dataclass(frozen=True, slots=True)
class PreviewRequest:
    """A validated `catalogan.generate_preview` argument."""

    preview_id: str
    tenant_id: str
    model_version_id: int
    category: str
    class_index: int
    count: int
    seed: int
    truncation: float = 1.0  # ψ; 1.0 = off (and what a request without the field means)

    @property
    def key_prefix(self) -> str:
        """`<tenant_id>/previews/<preview_id>`: the only prefix a preview writes under."""
        return canonical_prefix(self.tenant_id, self.preview_id)


def canonical_prefix(tenant_id: str, preview_id: str) -> str:
    """The key prefix of a preview: under the tenant's prefix, like every object of theirs."""
    return f"{tenant_id}/previews/{preview_id}"


def _is_segment(value: object) -> bool:
    return isinstance(value, str) and _SEGMENT.fullmatch(value) is not None and ".." not in value


def _int_field(raw: Mapping[str, Any], name: str, low: int, high: int) -> int:
    value = raw.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise PreviewRequestError(f"{name}: must be an integer in [{low}, {high}], got {value!r}")
    return value


def _truncation_field(raw: Mapping[str, Any]) -> float:
    """ψ of a request: 1.0 when absent (an API from before ψ), else a finite number in the job's range. The
    queue is not trusted: a value the API would have refused (5.0, NaN, "0.7", null) is refused here too."""
    if "truncation" not in raw:
        return 1.0
    value = raw["truncation"]
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or not MIN_TRUNCATION <= value <= MAX_TRUNCATION
    ):
        raise PreviewRequestError(
            f"truncation: must be a number in [{MIN_TRUNCATION}, {MAX_TRUNCATION}], got {value!r}"
        )
    return float(value)


def parse_request(raw: object) -> PreviewRequest:
    """Validate a task argument; raise `PreviewRequestError` naming the first field that breaks the contract."""
    if not isinstance(raw, Mapping):
        raise PreviewRequestError(f"request: must be a JSON object, got {type(raw).__name__}")
    for name in ("preview_id", "tenant_id"):
        if not _is_segment(raw.get(name)):
            raise PreviewRequestError(f"{name}: must be one path segment, got {raw.get(name)!r}")
    tenant_id, preview_id = str(raw["tenant_id"]), str(raw["preview_id"])
    expected = canonical_prefix(tenant_id, preview_id)
    if raw.get("key_prefix") != expected:
        raise PreviewRequestError(f"key_prefix: must be {expected!r}, got {raw.get('key_prefix')!r}")
    category = raw.get("category")
    if not isinstance(category, str) or not category:
        raise PreviewRequestError(f"category: must be a non-empty string, got {category!r}")
    return PreviewRequest(
        preview_id=preview_id,
        tenant_id=tenant_id,
        model_version_id=_int_field(raw, "model_version_id", 1, 2**63 - 1),
        category=category,
        class_index=_int_field(raw, "class_index", 0, 2**31 - 1),
        count=_int_field(raw, "count", 1, MAX_PREVIEW_IMAGES),
        seed=_int_field(raw, "seed", 0, MAX_SEED),
        truncation=_truncation_field(raw),
    )


def _answer_prefix(raw: object) -> str | None:
    """Where a refused request's error goes: the canonical prefix when both ids are safe, else nowhere."""
    if isinstance(raw, Mapping) and _is_segment(raw.get("tenant_id")) and _is_segment(raw.get("preview_id")):
        return canonical_prefix(str(raw["tenant_id"]), str(raw["preview_id"]))
    return None


def _write_result(store: ObjectStore, prefix: str, result: dict[str, Any]) -> None:
    data = json.dumps(result, sort_keys=True).encode()
    store.put(f"{prefix}/{RESULT_NAME}", data, content_type="application/json")


def _load_model(session_factory: sessionmaker[Session], request: PreviewRequest) -> ModelVersion:
    with session_factory() as session:
        model = session.get(ModelVersion, request.model_version_id)
        if model is None:
            raise PreviewRequestError(f"model_version_id: no model version {request.model_version_id}")
        session.expunge(model)
    categories = [str(name) for name in model.categories or []]
    if request.class_index >= len(categories) or categories[request.class_index] != request.category:
        raise PreviewRequestError(
            f"class_index: {request.class_index} is not category {request.category!r} of "
            f"{model.name}@{model.version} (categories {categories})"
        )
    return model


def _render(
    request: PreviewRequest, store: ObjectStore, generators: GeneratorCache, model: ModelVersion
) -> dict[str, Any]:
    """Generate, encode and upload the images; the `{"images": [...]}` result (not yet written)."""
    generator = generators.get(model)
    indices = list(range(request.count))
    recipe = truncation_recipe(request.truncation)  # what a job with this ψ stores; None at ψ 1.0
    # (B, H, W, C) uint8
    pixels = render_pixels(generator, request.seed, request.class_index, indices, control=recipe)
    checkpoint_sha = model.checkpoint_sha256 or generator.checkpoint_sha256
    inference = inference_fields(generator)  # as a job's files record it
    images = []
    for index in indices:
        provenance = Provenance(
            model_version=f"{model.name}@{model.version}",
            checkpoint_sha256=checkpoint_sha,
            job_id=PREVIEW_JOB_ID,
            index=index,
            seed=request.seed,
            category=request.category,
            sku=None,
            inference=inference,
            control=provenance_fields(recipe, index),  # () at ψ 1.0: the plain bytes
        )
        encoded = encode_with_digest(pixels[index], PREVIEW_FORMAT, provenance)
        key = f"{request.key_prefix}/{index:02d}.{PREVIEW_FORMAT}"
        store.put(key, encoded.data, content_type=CONTENT_TYPES[PREVIEW_FORMAT])
        images.append({"index": index, "category": request.category, "key": key, "sha256": encoded.sha256})
    return {"images": images}


def generate_preview(
    raw: object,
    *,
    session_factory: sessionmaker[Session],
    store: ObjectStore,
    generators: GeneratorCache,
) -> dict[str, Any] | None:
    """Answer one preview request: PNGs then `result.json` (written last); the result, or None when refused
    without a safe place to answer. Failures are answered as `{"error": ...}`, never raised, so the task
    is not retried; only a store that cannot take the error file raises.
    """
    try:
        request = parse_request(raw)
    except PreviewRequestError as exc:
        prefix = _answer_prefix(raw)
        logger.warning("preview refused: %s", exc, extra={"key_prefix": prefix})
        if prefix is None:
            return None
        result: dict[str, Any] = {"error": f"preview refused: {exc}"}
        _write_result(store, prefix, result)
        return result
    extra = {"preview_id": request.preview_id, "tenant_id": request.tenant_id}
    try:
        model = _load_model(session_factory, request)
        result = _render(request, store, generators, model)
    except Exception as exc:  # every failure must reach the polling API as an error result
        logger.exception("preview failed: %s", exc, extra=extra)
        result = {"error": f"{type(exc).__name__}: {exc}"}
    else:
        logger.info("preview of %d images written", request.count, extra=extra)
    _write_result(store, request.key_prefix, result)
    return result
