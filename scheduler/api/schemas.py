"""API payloads (*schemas*): `...Create` for what clients send, `...Public` for what the API returns.

Every count and string is bounded here so that a request breaking a bound is a 422 naming the field; the
bounds themselves are declared once, in `db.job_specs`. Bounds that an operator can tighten (images per job,
items per job) are checked again by `db.planning.submit_job` against `ApiSettings` (as `SubmitLimits`).
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    GetJsonSchemaHandler,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import PydanticCustomError

from db.errors import InvalidKeyError
from db.job_specs import (
    API_MAX_IMAGES_PER_ITEM,
    MAX_CATEGORY_CHARS,
    MAX_CHUNK_SIZE,
    MAX_CLIENT_ITEM_ID_CHARS,
    MAX_FRAMES,
    MAX_IMAGES_PER_JOB,
    MAX_ITEMS_PER_JOB,
    MAX_JOB_ID_CHARS,
    MAX_MODEL_REF_CHARS,
    MAX_REDRAWS,
    MAX_RETENTION_DAYS,
    MAX_SEED,
    MAX_SKU_CHARS,
    MAX_URL_LENGTH,
    MAX_VARIATIONS,
    MIN_CHUNK_SIZE,
    MIN_RETENTION_DAYS,
    SHA256_PATTERN,
    JobMetadata,
    QualityGateSpec,
    QueueName,
    Truncation,
)
from db.status import ImageStatus, JobStatus, ModelVersionStatus
from db.storage.keys import MAX_SEGMENT_BYTES, validate_job_folder
from db.urls import WEBHOOK_URL_PATTERN
from db.webhook_events import WebhookEvents

MAX_PREVIEW_IMAGES = 8
# What `validate_job_folder` enforces on a value that becomes a folder of object keys (422 `object_key_segment`).
KEY_SEGMENT_RULE = (
    "Part of object keys: no '/', '\\', control or format characters, not '.' or '..', no leading or trailing "
    f"whitespace, at most {MAX_SEGMENT_BYTES} bytes of UTF-8; not manifest.jsonl, manifest.parquet or shards "
    "in any case or with trailing dots (the job's own files)."
)

ModelRef = Field(
    default=None,
    max_length=MAX_MODEL_REF_CHARS,
    pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}(@[0-9]{1,9})?$",
    description="`name` (its production version) or `name@version`; empty = the production model.",
    examples=["fashion-cgan", "fashion-cgan@3"],
)


def _integral_number(value: Any) -> Any:
    """A JSON number without a fraction (`4.0`) as the int it is: JSON Schema's `integer` counts it as one,
    strict validation alone would not. Anything else goes on to strict int validation as is."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


# An integer a client sends: `4` or `4.0`, never `true`, `"4"` or `4.5`.
JsonInteger = Annotated[int, BeforeValidator(_integral_number)]
# Optional integers carry their bounds before the validator: `Field(ge=...)` on `JsonInteger | None` would
# reach the document as raw `ge`/`le` keys, which no client or tool reads, instead of `minimum`/`maximum`.
Seed = Annotated[int, Field(ge=0, le=MAX_SEED), BeforeValidator(_integral_number)]
ChunkSize = Annotated[int, Field(ge=MIN_CHUNK_SIZE, le=MAX_CHUNK_SIZE), BeforeValidator(_integral_number)]
# db.urls.WEBHOOK_URL_PATTERN, what the SSRF guard accepts before it resolves the host, is stated in the
# document so that a client (and the schemathesis run) knows.
# The document's `maximum` is the operator's CATALOGAN_MAX_JOB_RETENTION_DAYS (scheduler.api.app sets it).
RetentionDays = Annotated[
    int, Field(ge=MIN_RETENTION_DAYS, le=MAX_RETENTION_DAYS), BeforeValidator(_integral_number)
]


NO_NUL_PATTERN = "^[^\\u0000]*$"  # JSON Schema (ECMA-262): any string without U+0000


class _Strict(BaseModel):
    # What clients send: no unknown fields, and no coercion (`"seed": false` or `"count": "4"` would otherwise
    # pass as 0 and 4, against the integer the document promises). Manifest rows, text by nature, are
    # validated with `strict=False` (scheduler/api/item_manifests.py).
    model_config = ConfigDict(extra="forbid", strict=True)

    @field_validator("*", mode="after")
    @classmethod
    def _no_nul(cls, value: Any) -> Any:
        # PostgreSQL text cannot hold NUL: refuse it here, naming the field, instead of failing at the INSERT.
        if isinstance(value, str) and "\x00" in value:
            raise PydanticCustomError("no_nul", "must not contain the NUL character (U+0000)")
        return value

    @classmethod
    def __get_pydantic_json_schema__(cls, core_schema: Any, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        # The document states the rule above: every string property of these models gets `NO_NUL_PATTERN`.
        schema = handler(core_schema)
        for prop in handler.resolve_ref_schema(schema).get("properties", {}).values():
            for option in prop.get("anyOf", [prop]):
                if option.get("type") == "string":
                    if "pattern" in option:
                        option.setdefault("allOf", []).append({"pattern": NO_NUL_PATTERN})
                    else:
                        option["pattern"] = NO_NUL_PATTERN
        return schema


class ItemCreate(_Strict):
    """One requested line: `count` images of a category, optionally for one SKU."""

    category: str = Field(
        min_length=1,
        max_length=MAX_CATEGORY_CHARS,
        examples=["sneaker"],
        description=f"A category of the model. {KEY_SEGMENT_RULE}",
    )
    count: JsonInteger = Field(ge=1, le=API_MAX_IMAGES_PER_ITEM, examples=[4])
    sku: str | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_SKU_CHARS,
        examples=["SKU-10042"],
        description=KEY_SEGMENT_RULE,
    )
    client_item_id: str | None = Field(default=None, min_length=1, max_length=MAX_CLIENT_ITEM_ID_CHARS)

    @field_validator("sku", "category")
    @classmethod
    def _key_segment(cls, value: str | None, info: ValidationInfo) -> str | None:
        # SKU and category become folders in object keys: reject (never rewrite) anything unsafe there.
        if value is not None:
            try:
                validate_job_folder(value, str(info.field_name))
            except InvalidKeyError as exc:
                # The 422 names the rule, as for every other key the API refuses.
                raise PydanticCustomError("object_key_segment", "{reason}", {"reason": str(exc)}) from exc
        return value


class QualityGateCreate(QualityGateSpec):
    """The per-image quality gate as a client sends it (validated strictly, like every request field)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    max_redraws: JsonInteger = Field(default=3, ge=0, le=MAX_REDRAWS)


class ImageRefCreate(_Strict):
    """A delivered image of your tenant: the job id and the image's index in it; with `sha256`, the image must
    be exactly the file you hold (its job id and index read from the file's provenance, its bytes not sent)."""

    job_id: str = Field(
        min_length=1, max_length=MAX_JOB_ID_CHARS, examples=["4f0c2a9e8b7d4c6a9e2f1b3d5c7a9e0f"]
    )
    index: JsonInteger = Field(ge=0, le=MAX_IMAGES_PER_JOB, examples=[3])
    sha256: str | None = Field(
        default=None,
        min_length=64,
        max_length=64,
        pattern=SHA256_PATTERN,
        description="Hex SHA-256 of the file you hold (lower case). When given it must equal the sha256 "
        "recorded for that delivered image (422 naming `...source.sha256`, rule `recorded_sha256`).",
        examples=["5d41402abc4b2a76b9719d911017c5925d41402abc4b2a76b9719d911017c592"],
    )


class VariationCreate(_Strict):
    """`count` images near a delivered image (same model version and category as it)."""

    source: ImageRefCreate
    strength: float = Field(
        ge=0.0,
        le=1.0,
        allow_inf_nan=False,
        description="0 = the source image itself (same pixels), 1 = an unrelated image of its category.",
        examples=[0.3],
    )
    count: JsonInteger = Field(ge=1, le=MAX_VARIATIONS, examples=[8])


class InterpolationCreate(_Strict):
    """`frames` images on the latent path from `start` to `end` (both included): one model version, one
    category."""

    start: ImageRefCreate
    end: ImageRefCreate
    frames: JsonInteger = Field(ge=2, le=MAX_FRAMES, examples=[8])


_SOURCES = ("items", "manifest_uri", "variation", "interpolation")  # where a job's images come from


class JobCreate(_Strict):
    """A bulk job: inline `items`, or a manifest of SKUs at `manifest_uri` (or uploaded as multipart `file`)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "model": "fashion-cgan",
                    "items": [{"category": "sneaker", "count": 4, "sku": "SKU-10042"}],
                    "seed": 7,
                    "webhook_url": "https://etl.example.com/hooks/catalogan",
                }
            ],
            # A JSON body names exactly one source of images (checked in the route and `_one_source`).
            "anyOf": [
                {
                    "required": [source],
                    "properties": {
                        other: {"not": {"type": "null"}} if other == source else {"type": "null"}
                        for other in _SOURCES
                    },
                }
                for source in _SOURCES
            ],
        },
    )

    model: str | None = ModelRef
    items: list[ItemCreate] | None = Field(default=None, min_length=1, max_length=MAX_ITEMS_PER_JOB)
    manifest_uri: str | None = Field(
        default=None,
        max_length=MAX_URL_LENGTH,
        pattern=r"^s3://[^/]+/.+\.(csv|jsonl|parquet)$",
        description="An `s3://bucket/key` CSV, JSONL or Parquet file with columns sku, category, count.",
        examples=["s3://catalog/exports/missing-images.csv"],
    )
    seed: Seed | None = Field(default=None, description="Chosen and recorded when omitted.")
    output_format: Literal["png", "webp", "tar"] | None = Field(
        default=None,
        description="png (default) or lossless webp, one object per image; tar: WebDataset shards of PNGs, "
        "one per chunk (chunk_size = images per shard, default 1,000), plus `shards/index.json`.",
    )
    quality_gate: QualityGateCreate | None = Field(
        default=None,
        description="Score each image with the evaluator (probability of its category); below "
        "`min_confidence` redraw it from sub-seed (seed, index, redraw) up to `max_redraws` times, then mark it "
        "`rejected` (counted in `images_rejected`, listed in the manifest with its score and redraws).",
        examples=[{"min_confidence": 0.6, "max_redraws": 3}],
    )
    chunk_size: ChunkSize | None = Field(default=None, description="Images per task; default chosen.")
    webhook_url: str | None = Field(
        default=None,
        max_length=MAX_URL_LENGTH,
        pattern=WEBHOOK_URL_PATTERN,
        description="Overrides the tenant default. An http(s) URL with a host (a DNS name or IPv4 address; use a "
        "name for IPv6), an optional port and no credentials; its host must resolve to public addresses only (else 422 `public_http_target`).",
    )
    truncation: Truncation | None = Field(
        default=None,
        description="ψ: each latent is scaled by ψ (1.0 = off, the default; lower = more typical, less "
        "varied images). A variation defaults to its source's ψ; not with interpolation. See "
        "docs/controlling.md.",
        examples=[0.7],
    )
    variation: VariationCreate | None = Field(
        default=None, description="Images near one delivered image of yours (instead of items)."
    )
    interpolation: InterpolationCreate | None = Field(
        default=None, description="Frames between two delivered images of yours (instead of items)."
    )
    metadata: JobMetadata | None = None
    retention_days: RetentionDays | None = Field(
        default=None,
        description="Days the job's images, manifest and rows are kept once it finishes; then they are deleted. "
        "Default and maximum are the operator's (CATALOGAN_JOB_RETENTION_DAYS, 30; "
        "CATALOGAN_MAX_JOB_RETENTION_DAYS, 365). The job's `expires_at` says when.",
        examples=[7],
    )
    queue: QueueName | None = Field(
        default=None,
        description="The job's priority: `interactive` (highest; small chunks of 32 by default), `bulk` (the "
        "default) or `backfill` (lowest; chunks of 1,024). Up to the tenant's allowance, set by the operator "
        "(`catalogan tenants set --highest-queue`; `bulk` unless raised): above it is a 422 naming `queue`.",
        examples=["interactive"],
    )
    webhook_events: WebhookEvents | None = None

    @model_validator(mode="after")
    def _one_source(self) -> JobCreate:
        given = [name for name in _SOURCES if getattr(self, name) is not None]
        if len(given) > 1:
            raise ValueError(
                f"give one of items, manifest_uri, variation or interpolation, not {' and '.join(given)}"
            )
        return self


class CountsPublic(BaseModel):
    """How far a job got."""

    images_total: int
    images_done: int
    images_failed: int
    images_rejected: int
    chunks_total: int
    chunks_finished: int
    items_skipped_existing: int = Field(
        default=0,
        description="Items not generated: an earlier job delivered all their images with the same "
        "client_item_id, category, SKU, count, model version, seed, format and options. The manifest lists "
        "those images with status `skipped_existing`. Not counted in images_total.",
    )
    images_skipped_existing: int = Field(default=0, description="Images of the skipped items.")


class ModelVersionRef(BaseModel):
    """The model version a job runs with."""

    name: str
    version: int


class ImageRefPublic(BaseModel):
    """A source image of a job: the job id and the image's index in it."""

    job_id: str
    index: int


class VariationPublic(BaseModel):
    """What a variations job was asked for: `count` images near `source` at `strength`."""

    source: ImageRefPublic
    strength: float
    count: int


class InterpolationPublic(BaseModel):
    """What an interpolation job was asked for: `frames` images from `start` to `end`, both included."""

    start: ImageRefPublic
    end: ImageRefPublic
    frames: int


JOB_EXAMPLE: dict[str, Any] = {
    "id": "4f0c2a9e8b7d4c6a9e2f1b3d5c7a9e0f",
    "status": "running",
    "model": {"name": "fashion-cgan", "version": 3},
    "seed": 7,
    "output_format": "png",
    "chunk_size": 256,
    "quota_cost": 10000,
    "counts": {
        "images_total": 10000,
        "images_done": 6144,
        "images_failed": 0,
        "images_rejected": 0,
        "chunks_total": 40,
        "chunks_finished": 24,
        "items_skipped_existing": 0,
        "images_skipped_existing": 0,
    },
    "progress": 0.6144,
    "eta_seconds": 41.5,
    "cancel_requested": False,
    "webhook_url": "https://etl.example.com/hooks/catalogan",
    "metadata": {"batch": "spring-2027"},
    "queue": "bulk",
    "webhook_events": None,
    "error": None,
    "created_at": "2026-11-27T07:00:00Z",
    "started_at": "2026-11-27T07:00:02Z",
    "finished_at": None,
    "retention_days": 30,
    "expires_at": None,
    "truncation": None,
    "variation": None,
    "interpolation": None,
}


class JobPublic(BaseModel):
    """A job as clients see it."""

    model_config = ConfigDict(json_schema_extra={"examples": [JOB_EXAMPLE]})

    id: str = Field(examples=["4f0c2a9e8b7d4c6a9e2f1b3d5c7a9e0f"])
    status: JobStatus = Field(
        description="queued, running, cancelling, then one of: succeeded (every image delivered), "
        "completed_with_failures (some images failed, the others were delivered: `counts.images_failed`; "
        "POST .../retry runs the failed ones again), failed (no image delivered, or the job could not run), "
        "cancelled."
    )
    model: ModelVersionRef | None
    seed: int
    output_format: str
    chunk_size: int
    quota_cost: int = Field(
        description="Images charged to the tenant's daily quota: each generated image with its quality gate's "
        "max_redraws (images × (1 + max_redraws)), reserved at submit."
    )
    counts: CountsPublic
    progress: float = Field(ge=0, le=1, description="Finished images (done + failed + rejected) / total.")
    eta_seconds: float | None = Field(
        description="Seconds left at the measured rate; null when unknown or done."
    )
    cancel_requested: bool
    webhook_url: str | None
    metadata: dict[str, str] = Field(description="The labels given at submit ({} when none).")
    queue: QueueName = Field(description="The queue (priority) the job's chunks go to.")
    webhook_events: list[str] | None = Field(description="The events sent for this job (null = every event).")
    error: str | None
    created_at: dt.datetime
    started_at: dt.datetime | None
    finished_at: dt.datetime | None
    retention_days: int | None = Field(
        default=None, description="Days the job is kept once finished (null: until deleted)."
    )
    expires_at: dt.datetime | None = Field(
        default=None,
        description="When the job's objects and rows are deleted: finished_at + retention_days. Null while it "
        "runs (a running job never expires) or when kept until deleted.",
    )
    truncation: float | None = Field(
        default=None,
        description="ψ the job's latents are scaled by (a variation: its own or its source's); null = 1.0, off.",
    )
    variation: VariationPublic | None = Field(
        default=None, description="The source image, strength and count of a variations job (else null)."
    )
    interpolation: InterpolationPublic | None = Field(
        default=None, description="The two end images and the frames of an interpolation job (else null)."
    )


class JobPage(BaseModel):
    """One page of jobs, newest first; pass `next_cursor` as `cursor` for the next page."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"data": [JOB_EXAMPLE], "next_cursor": "WyIyMDI2LTExLTI3VDA3OjAwOjAwWiIsIjRmMGMiXQ"}]
        }
    )

    data: list[JobPublic]
    next_cursor: str | None


class ImagePublic(BaseModel):
    """One generated image; `url` is a presigned GET valid until `url_expires_at`."""

    index: int
    category: str
    sku: str | None
    status: ImageStatus
    key: str | None
    sha256: str | None
    size_bytes: int | None
    width: int | None
    height: int | None
    url: str | None
    url_expires_at: dt.datetime | None
    error: str | None


class ImagePage(BaseModel):
    """One page of a job's images in index order."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "data": [
                        {
                            "index": 0,
                            "category": "sneaker",
                            "sku": "SKU-10042",
                            "status": "succeeded",
                            "key": "9b1f.../jobs/4f0c.../SKU-10042/00000000.png",
                            "sha256": "5d41402abc4b2a76b9719d911017c592" * 2,
                            "size_bytes": 1834,
                            "width": 28,
                            "height": 28,
                            "url": "https://s3.example.com/catalogan/...&X-Amz-Signature=...",
                            "url_expires_at": "2026-11-27T08:00:00Z",
                            "error": None,
                        }
                    ],
                    "next_cursor": "WzBd",
                }
            ]
        }
    )

    data: list[ImagePublic]
    next_cursor: str | None


class EstimatePublic(BaseModel):
    """What a job would cost, without creating it."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "images": 10000,
                    "quota_cost": 10000,
                    "chunks": 40,
                    "seconds": 83.3,
                    "images_per_second": 120.0,
                    "throughput_basis": "measured",
                    "model": {"name": "fashion-cgan", "version": 3},
                }
            ]
        }
    )

    images: int
    quota_cost: int = Field(
        description="What the job would charge to the daily quota: images × (1 + quality_gate.max_redraws)."
    )
    chunks: int = Field(description="Chunks (broker messages); consecutive small items share a chunk.")
    seconds: float
    images_per_second: float
    throughput_basis: Literal["measured", "default"] = Field(
        description="`measured` from chunks finished in the last hour, else the configured default."
    )
    model: ModelVersionRef


class PreviewCreate(_Strict):
    """Up to 8 images generated synchronously, to try a model before a bulk job."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"model": "fashion-cgan", "category": "dress", "count": 4}]},
    )

    model: str | None = ModelRef
    category: str = Field(min_length=1, max_length=MAX_CATEGORY_CHARS)
    count: JsonInteger = Field(default=4, ge=1, le=MAX_PREVIEW_IMAGES)
    seed: Seed | None = None
    truncation: Truncation | None = Field(
        default=None,
        description="ψ, as a job's `truncation` (0.3–1.0; 1.0 = off, the default): image i is image i of a job "
        "with the same model version, seed, category and ψ. See docs/controlling.md.",
        examples=[0.7],
    )


class PreviewImagePublic(BaseModel):
    """One preview image, inline as base64 PNG."""

    index: int
    category: str
    sha256: str
    png_base64: str


class PreviewPublic(BaseModel):
    """The images of one preview."""

    model: ModelVersionRef
    seed: int
    truncation: float = Field(
        description="ψ the images were made with (1.0 = off): the `truncation` a job needs to deliver them."
    )
    images: list[PreviewImagePublic]


class ModelMetricsSummary(BaseModel):
    """A version's headline quality metrics, as `catalogan evaluate` measured them (null: not measured).

    A summary: per-category tables, memorization-index details and where files are stored stay with
    operators (`catalogan models show NAME@VERSION --json`, the console's models page)."""

    model_config = ConfigDict(extra="forbid")

    fid_fm: float | None = Field(
        default=None, description="Fréchet distance in the evaluator's features (lower is better)."
    )
    kid: float | None = None
    precision: float | None = None
    recall: float | None = None
    conditional_accuracy: float | None = Field(
        default=None, description="Share of images the evaluator puts in the asked category."
    )
    cas: float | None = Field(
        default=None,
        description="Classification accuracy score: a classifier trained on generated images, tested on real ones.",
    )
    intra_class_ssim: float | None = Field(
        default=None, description="Mean pairwise SSIM within a category (high: collapse)."
    )
    near_copy_rate: float | None = Field(
        default=None, description="Share of images nearer a training image than the memorization gate allows."
    )
    samples_per_class: int | None = Field(
        default=None, description="Images per category the metrics were measured on."
    )


class ModelPublic(BaseModel):
    """A registered generator version."""

    name: str
    version: int
    status: ModelVersionStatus
    preset: str
    architecture: str
    categories: list[Any]
    metrics: ModelMetricsSummary
    created_at: dt.datetime
    promoted_at: dt.datetime | None


class ModelList(BaseModel):
    """Every registered model version, newest first."""

    data: list[ModelPublic]


class HealthPublic(BaseModel):
    """Liveness: the process answers."""

    status: Literal["ok"]


class ReadinessPublic(BaseModel):
    """Readiness: each backing service and whether it answered."""

    status: Literal["ok", "unavailable"]
    checks: dict[str, str] = Field(examples=[{"database": "ok", "broker": "ok", "object_store": "ok"}])
