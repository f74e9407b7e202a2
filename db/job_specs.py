"""What a client asks for, in one torch-free type: `JobSpec` (+ `ItemSpec`, `QualityGateSpec`) and every bound.

Both front doors convert into it: the API's `JobCreate` schema (scheduler/api/job_requests.py) and the CLI's
`GenerateRequest` (workers/generate_command.py). Each bound is declared here once; the API schema reads its
`Field(le=...)` values from here, and the operator's settings (`ApiSettings` → `SubmitLimits`) tighten them,
never widen them.

    spec = parse_job_spec({"model": "fashion-cgan", "items": [{"category": "sneaker", "count": 100}]})
    SubmitLimits(max_images_per_job=10_000).check(spec)      # PlanningError(field="items", rule=...)
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import pydantic
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from db.chunk_layout import count_chunk_ranges
from db.chunk_sizes import DEFAULT_CHUNK_SIZES, MAX_CHUNK_SIZE, MIN_CHUNK_SIZE  # noqa: F401 (re-exported)
from db.errors import InvalidKeyError, PlanningError
from db.storage.keys import validate_job_folder
from db.webhook_events import WebhookEvents

# The bounds of any job, whichever door it came through. Planning is O(chunks), so these bound rows, not images.
MAX_SEED = (1 << 63) - 1
MAX_ITEMS_PER_JOB = 100_000
MAX_IMAGES_PER_ITEM = 10_000_000
MAX_IMAGES_PER_JOB = 10_000_000
MAX_CHUNKS_PER_JOB = 200_000
MAX_REDRAWS = 16
MAX_URL_LENGTH = 2048
MAX_MODEL_REF_CHARS = 80
# A model version in a reference: 1 to 9 ASCII digits, as the API's `name@version` pattern allows (a version
# column is a 32-bit integer; `str.isdigit` would let '²' through to `int()`).
MODEL_VERSION_PATTERN = re.compile(r"[0-9]{1,9}")
MAX_MODEL_VERSION = 999_999_999
MAX_CATEGORY_CHARS = 64
MAX_SKU_CHARS = 128
MAX_CLIENT_ITEM_ID_CHARS = 255
MAX_JOB_ID_CHARS = 64
# A job's `metadata`: the client's own string labels, returned with the job and filterable in `GET /v1/jobs`.
MAX_METADATA_KEYS = 16
MAX_METADATA_KEY_CHARS = 64
MAX_METADATA_VALUE_CHARS = 512
METADATA_KEY_PATTERN = r"^[a-z0-9_.-]+$"
# One `key=value` metadata filter (the list's query parameter; an ECMA-compatible regex for the OpenAPI document).
METADATA_FILTER_PATTERN = (
    rf"^[a-z0-9_.-]{{1,{MAX_METADATA_KEY_CHARS}}}=[^\x00]{{0,{MAX_METADATA_VALUE_CHARS}}}$"
)

# Retention (docs/api.md#retention): days a finished job is kept before the reaper deletes its objects and rows.
# The clock starts when the job finishes. The operator's default and maximum (`CATALOGAN_JOB_RETENTION_DAYS`,
# `CATALOGAN_MAX_JOB_RETENTION_DAYS`) apply to API submits; this is the bound of any job.
MIN_RETENTION_DAYS = 1
MAX_RETENTION_DAYS = 3650
API_DEFAULT_RETENTION_DAYS = 30
API_DEFAULT_MAX_RETENTION_DAYS = 365

# Creative control (docs/controlling.md): truncation ψ, variations of an image, interpolation between two.
MIN_TRUNCATION = 0.3
MAX_TRUNCATION = 1.0
MAX_VARIATIONS = 10_000  # images one variations job may ask for
MAX_FRAMES = 10_000  # frames one interpolation job may ask for
# The job option where a job row keeps its resolved latent control (db.latent_control); never client-set.
LATENT_CONTROL_OPTION = "latent_control"
# A source image's file as the client names it: the hex sha256 of its bytes (as image rows record it).
SHA256_PATTERN = r"^[0-9a-f]{64}$"

# What one item of an API request may ask for (the schema's published bound; ApiSettings may tighten it).
# Larger items are for the trusted doors (the CLI, ETL scripts calling `submit_job`).
API_MAX_IMAGES_PER_ITEM = 100_000
# The operator's default images per job over the API (`CATALOGAN_MAX_IMAGES_PER_JOB`).
API_DEFAULT_MAX_IMAGES_PER_JOB = 1_000_000
# The operator's default chunks (= broker messages) per job over the API (`CATALOGAN_MAX_CHUNKS_PER_JOB`):
# 1,000,000 images at 50 a chunk; small items are packed, so it bounds messages, not items.
API_DEFAULT_MAX_CHUNKS_PER_JOB = 20_000

# `output_format: tar` writes one WebDataset shard per chunk: the chunk size is the shard size.
DEFAULT_SHARD_IMAGES = 1000

QueueName = Literal["interactive", "bulk", "backfill"]  # db.messaging.QUEUE_NAMES (checked there)
OutputFormat = Literal["png", "webp", "tar"]


def check_metadata(value: dict[str, str]) -> dict[str, str]:
    """Refuse (never rewrite) metadata breaking a bound; the message names the key and the rule."""
    if len(value) > MAX_METADATA_KEYS:
        raise ValueError(f"at most {MAX_METADATA_KEYS} keys")
    for key, text in value.items():
        if not 1 <= len(key) <= MAX_METADATA_KEY_CHARS or not re.fullmatch(METADATA_KEY_PATTERN, key):
            raise ValueError(f"key {key[:80]!r}: 1 to {MAX_METADATA_KEY_CHARS} characters of [a-z0-9_.-]")
        if len(text) > MAX_METADATA_VALUE_CHARS or "\x00" in text:
            raise ValueError(f"value of {key!r}: at most {MAX_METADATA_VALUE_CHARS} characters, no NUL")
    return value


def parse_metadata_pairs(pairs: Sequence[str], field: str = "metadata") -> dict[str, str]:
    """`["key=value", ...]` (a list filter, a CLI option) as metadata; `PlanningError` naming `field` and the rule."""
    values: dict[str, str] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep:
            raise PlanningError(field, "key_value", f"{field}: {pair[:80]!r} is not key=value")
        values[key] = text
    try:
        return check_metadata(values)
    except ValueError as exc:
        raise PlanningError(field, "metadata_bounds", f"{field}: {exc}") from exc


# The one declaration of ψ (docs/controlling.md): a finite number in 0.3–1.0, 1.0 = off. A job's `truncation`
# (JobSpec and the API's JobCreate) and a preview's (PreviewCreate) are this type, so both refuse alike.
Truncation = Annotated[float, Field(ge=MIN_TRUNCATION, le=MAX_TRUNCATION, allow_inf_nan=False)]

# The one declaration of a job's metadata (JobSpec and the API's JobCreate both use it).
JobMetadata = Annotated[
    dict[str, str],
    AfterValidator(check_metadata),
    Field(
        description=f"Your own labels: at most {MAX_METADATA_KEYS} keys of 1-{MAX_METADATA_KEY_CHARS} characters "
        f"of [a-z0-9_.-], string values of at most {MAX_METADATA_VALUE_CHARS} characters. Returned with the "
        "job and its webhooks; filter with `GET /v1/jobs?metadata=key=value`.",
        examples=[{"batch": "spring-2027", "owner": "etl.nightly"}],
        # The same rules in the document, so a client (and the schemathesis run) knows what is accepted.
        json_schema_extra={
            "maxProperties": MAX_METADATA_KEYS,
            "propertyNames": {
                "pattern": f"^[a-z0-9_.-]{{1,{MAX_METADATA_KEY_CHARS}}}$",
                "minLength": 1,
                "maxLength": MAX_METADATA_KEY_CHARS,
            },
            "additionalProperties": {
                "type": "string",
                "maxLength": MAX_METADATA_VALUE_CHARS,
                "pattern": "^[^\\x00]*$",
            },
        },
    ),
]


class ItemSpec(BaseModel):
    """One requested line: `count` images of `category`, optionally for one SKU."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    category: str = Field(min_length=1, max_length=MAX_CATEGORY_CHARS)
    count: int = Field(ge=1, le=MAX_IMAGES_PER_ITEM)
    sku: str | None = Field(default=None, max_length=MAX_SKU_CHARS)
    client_item_id: str | None = Field(default=None, max_length=MAX_CLIENT_ITEM_ID_CHARS)

    @field_validator("sku")
    @classmethod
    def _sku_is_a_key_segment(cls, value: str | None) -> str | None:
        # The SKU becomes a folder in the object key: reject (never rewrite) anything unsafe there.
        if value is not None:
            try:
                validate_job_folder(value, "sku")
            except InvalidKeyError as exc:
                raise ValueError(str(exc)) from exc
        return value


class QualityGateSpec(BaseModel):
    """Per-image quality gate: redraw an image scored below `min_confidence`, at most `max_redraws` times."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_confidence: float = Field(
        ge=0.0, le=1.0, description="Evaluator probability of the requested category."
    )
    max_redraws: int = Field(default=3, ge=0, le=MAX_REDRAWS)


class ImageRef(BaseModel):
    """A delivered image of the same tenant: job id + image index, and optionally the sha256 of the file the
    client holds (`db.source_files`): then the image must be exactly that file (`db.latent_control`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    job_id: str = Field(min_length=1, max_length=MAX_JOB_ID_CHARS)
    index: int = Field(ge=0, le=MAX_IMAGES_PER_JOB)
    sha256: str | None = Field(default=None, pattern=SHA256_PATTERN)


class VariationSpec(BaseModel):
    """`count` images whose latents lie near the source image's: `strength` 0 = the source itself, 1 = unrelated."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    source: ImageRef
    strength: float = Field(ge=0.0, le=1.0, allow_inf_nan=False)
    count: int = Field(ge=1, le=MAX_VARIATIONS)


class InterpolationSpec(BaseModel):
    """`frames` images on the latent arc (slerp) from `start` to `end`, both ends included."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    start: ImageRef
    end: ImageRef
    frames: int = Field(ge=2, le=MAX_FRAMES)


class JobSpec(BaseModel):
    """What a client asks for. `model` None = the newest production version of any name; `seed` is chosen
    and recorded when absent; `chunk_size` defaults per queue.

    The images come from exactly one of `items`, `variation` or `interpolation`; a variation or
    interpolation job's one item (the source's category, `count` / `frames` images) is filled in by
    planning (`db.latent_control`), which also checks the source images. `truncation` ψ (0.3–1.0) scales
    each latent; absent = 1.0 (a variation: its source's ψ).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str | None = Field(
        default=None, min_length=1, max_length=MAX_MODEL_REF_CHARS, description="name or name@version"
    )
    # Declared before `items`, so that the validators of `items` and `truncation` see them.
    variation: VariationSpec | None = None
    interpolation: InterpolationSpec | None = None
    items: list[ItemSpec] = Field(default_factory=list, max_length=MAX_ITEMS_PER_JOB, validate_default=True)
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED)
    output_format: OutputFormat = "png"
    chunk_size: int | None = Field(default=None, ge=MIN_CHUNK_SIZE, le=MAX_CHUNK_SIZE)
    queue: QueueName = "bulk"
    webhook_url: str | None = Field(default=None, max_length=MAX_URL_LENGTH)
    options: dict[str, Any] = Field(default_factory=dict)
    quality_gate: QualityGateSpec | None = None
    truncation: Truncation | None = None
    metadata: JobMetadata = Field(default_factory=dict)
    retention_days: int | None = Field(default=None, ge=MIN_RETENTION_DAYS, le=MAX_RETENTION_DAYS)
    webhook_events: WebhookEvents | None = None  # None = every event (db.webhook_events)

    @field_validator("options")
    @classmethod
    def _options_reserved(cls, value: dict[str, Any]) -> dict[str, Any]:
        # The resolved latent control lives in the job's options; a client must not forge it.
        if LATENT_CONTROL_OPTION in value:
            raise ValueError(
                f"{LATENT_CONTROL_OPTION!r} is reserved: use truncation, variation or interpolation"
            )
        return value

    @field_validator("interpolation")
    @classmethod
    def _one_control(cls, value: InterpolationSpec | None, info: ValidationInfo) -> InterpolationSpec | None:
        if value is not None and info.data.get("variation") is not None:
            raise ValueError("give either variation or interpolation, not both")
        return value

    @field_validator("items")
    @classmethod
    def _one_image_source(cls, value: list[ItemSpec], info: ValidationInfo) -> list[ItemSpec]:
        control = [name for name in ("variation", "interpolation") if info.data.get(name) is not None]
        if control and value:
            raise ValueError(f"omit items with {control[0]} (its images come from the source images)")
        if not control and not value and not {"variation", "interpolation"} - set(info.data):
            raise PydanticCustomError("too_short", "List should have at least 1 item")
        # A client item id names one item of a job (what an incremental resubmit matches on). Repeated, it
        # would only let one delivered item stand for any number of skipped items, which cost no quota.
        first: dict[str, int] = {}
        for position, item in enumerate(value):
            if item.client_item_id is None:
                continue
            earlier = first.setdefault(item.client_item_id, position)
            if earlier != position:
                raise PydanticCustomError(
                    "unique_client_item_id",
                    "items.{position}.client_item_id {value} repeats items.{earlier}'s: a client item id names "
                    "one item of a job",
                    {"position": position, "value": repr(item.client_item_id), "earlier": earlier},
                )
        return value

    @field_validator("truncation")
    @classmethod
    def _no_truncation_of_frames(cls, value: float | None, info: ValidationInfo) -> float | None:
        if value is not None and info.data.get("interpolation") is not None:
            raise ValueError("not with interpolation (the frames lie between the two images' own latents)")
        return value

    @field_validator("webhook_url")
    @classmethod
    def _webhook_is_http(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("https://", "http://")):
            raise ValueError("must be an http:// or https:// URL")
        return value

    @property
    def images_total(self) -> int:
        """Images requested over all items (or the variations / frames asked for)."""
        if self.variation is not None:
            return self.variation.count
        if self.interpolation is not None:
            return self.interpolation.frames
        return sum(item.count for item in self.items)

    @property
    def redraws_per_image(self) -> int:
        """Redraws one image may take at worst: the quality gate's `max_redraws`, none without a gate, and none
        for an interpolation, whose frames do not move when redrawn (a frame is where it is on the path, so
        the gate scores it once and rejects it if it fails; redrawing would render the same pixels)."""
        if self.quality_gate is None or self.interpolation is not None:
            return 0
        return self.quality_gate.max_redraws

    @property
    def quota_cost(self) -> int:
        """Generations this job may spend at worst, what the tenant's daily quota is charged: each image
        once, plus its `redraws_per_image`."""
        return self.images_total * (1 + self.redraws_per_image)

    def chunks_total(self, chunk_size: int | None = None) -> int:
        """Chunks planning makes for this spec (`db.chunk_layout`: small items packed), at most; items an
        earlier job already delivered make fewer. `chunk_size` None = `effective_chunk_size`."""
        counts = [item.count for item in self.items] if self.items else [self.images_total]
        return count_chunk_ranges(counts, chunk_size or self.effective_chunk_size)

    @property
    def effective_chunk_size(self) -> int:
        """The chunk size asked for, or the queue's default (tar: images per shard, 1,000).

        The queue's default is the operator's `CATALOGAN_CHUNK_SIZE_<QUEUE>` (`db.pipeline_settings.
        ChunkSizeSettings`, read here, where planning needs it), else `DEFAULT_CHUNK_SIZES`.
        """
        if self.output_format == "tar":
            return self.chunk_size or DEFAULT_SHARD_IMAGES
        if self.chunk_size:
            return self.chunk_size
        from db.pipeline_settings import ChunkSizeSettings  # pydantic-settings: only where jobs are planned

        return ChunkSizeSettings().for_queue(self.queue)


@dataclass(frozen=True, slots=True)
class SubmitLimits:
    """The operator's bounds on top of the spec's own, and whether the tenant's quotas apply.

    The defaults are the spec's bounds and no quotas: a trusted door (the embedded CLI, a script). The API
    builds its limits from `ApiSettings` with quotas on.
    """

    max_items_per_job: int = MAX_ITEMS_PER_JOB
    max_images_per_item: int = MAX_IMAGES_PER_ITEM
    max_images_per_job: int = MAX_IMAGES_PER_JOB
    max_chunks_per_job: int = MAX_CHUNKS_PER_JOB
    tenant_quotas: bool = False
    # Days a finished job is kept when the request names none (None: kept until deleted), and the most a
    # request may ask for.
    default_retention_days: int | None = None
    max_retention_days: int = MAX_RETENTION_DAYS

    def retention_days(self, spec: JobSpec) -> int | None:
        """The days `spec`'s job is kept once finished: its own `retention_days`, else the default."""
        return spec.retention_days if spec.retention_days is not None else self.default_retention_days

    def check_retention(self, spec: JobSpec) -> None:
        """`PlanningError` naming `retention_days` when it is above the operator's maximum."""
        if spec.retention_days is not None and spec.retention_days > self.max_retention_days:
            raise PlanningError(
                "retention_days",
                "max_retention_days",
                f"retention_days: at most {self.max_retention_days} days (the operator's maximum)",
            )

    def check(self, spec: JobSpec) -> None:
        """Raise `PlanningError` naming the field and the rule when `spec` breaks one of these bounds."""
        self.check_retention(spec)
        if len(spec.items) > self.max_items_per_job:
            raise PlanningError(
                "items", "max_items", f"items: at most {self.max_items_per_job} items per job"
            )
        for position, item in enumerate(spec.items):
            if item.count > self.max_images_per_item:
                field = f"items[{position}].count"
                raise PlanningError(
                    field,
                    "max_images_per_item",
                    f"{field}: at most {self.max_images_per_item} images per item",
                )
        count_field = _control_count_field(spec)
        total = spec.images_total
        if count_field is not None and total > self.max_images_per_item:
            raise PlanningError(
                count_field,
                "max_images_per_item",
                f"{count_field}: at most {self.max_images_per_item} images per job of this kind",
            )
        if total > self.max_images_per_job:
            raise PlanningError(
                count_field or "items",
                "max_images_per_job",
                f"items: {total} images; at most {self.max_images_per_job} per job",
            )
        check_chunks(spec, self.max_chunks_per_job)


def check_chunks(spec: JobSpec, max_chunks: int) -> int:
    """The chunks (broker messages) `spec` makes; `PlanningError` (rule `max_chunks_per_job`) over `max_chunks`.

    The field is `chunk_size` when the largest chunk size would fit, else `items` (too many large items).
    """
    chunk_size = spec.effective_chunk_size
    chunks = spec.chunks_total(chunk_size)
    if chunks <= max_chunks:
        return chunks
    fewest = spec.chunks_total(MAX_CHUNK_SIZE)
    if fewest <= max_chunks:
        raise PlanningError(
            "chunk_size",
            "max_chunks_per_job",
            f"chunk_size: {chunk_size} images a chunk makes {chunks} chunks; a job may make at most "
            f"{max_chunks} — use a larger chunk_size",
        )
    raise PlanningError(
        "items",
        "max_chunks_per_job",
        f"items: {fewest} chunks even at the largest chunk_size ({MAX_CHUNK_SIZE}); a job may make at most "
        f"{max_chunks} — split the job",
    )


def _control_count_field(spec: JobSpec) -> str | None:
    """The field that sets a variation / interpolation job's image count; None for a job of items."""
    if spec.variation is not None:
        return "variation.count"
    if spec.interpolation is not None:
        return "interpolation.frames"
    return None


def field_path(loc: Sequence[int | str]) -> str:
    """A pydantic error location as the field path the API and CLI print: `items[2].count`."""
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path or "spec"


def parse_job_spec(data: Mapping[str, Any]) -> JobSpec:
    """Validate a job spec from JSON-like data; raise `PlanningError` naming the (first) field and the rule."""
    try:
        return JobSpec.model_validate(data)
    except pydantic.ValidationError as exc:
        errors = exc.errors()
        problems = [f"{field_path(err['loc'])}: {err['msg'].removeprefix('Value error, ')}" for err in errors]
        raise PlanningError(
            field_path(errors[0]["loc"]), str(errors[0]["type"]), "; ".join(problems)
        ) from exc


def split_model_ref(ref: str) -> tuple[str, int | None]:
    """Split "name" or "name@version" into (name, version or None); raise `PlanningError` when malformed."""
    name, sep, version = ref.partition("@")
    if not name or (sep and not MODEL_VERSION_PATTERN.fullmatch(version)):
        raise PlanningError(
            "model",
            "model_ref",
            f"model {ref!r}: must be 'name' or 'name@version' with a version of 1 to 9 digits (0-9)",
        )
    return name, int(version) if sep else None


def request_sha256(spec: JobSpec) -> str:
    """A stable hash of the request (to detect an idempotency key reused with a different body).

    The creative-control fields and `webhook_events` are left out when unused (and ψ = 1.0 of a plain job
    counts as unused), so a request without them hashes as it did before they existed: `catalogan generate`
    derives its job id from this hash, and the job id is part of every file's bytes. (`queue` always counted,
    as `bulk` when not chosen.) A source's `sha256` is left out too: it pins which file the client holds, not
    what the job makes, so naming a source by its file or by JOB/INDEX is the same request (the same job id,
    the same files).
    """
    data = spec.model_dump(mode="json")
    for name in ("variation", "interpolation"):
        if data[name] is None:
            del data[name]
            continue
        for source in ("source", "start", "end"):
            if source in data[name]:
                data[name][source].pop("sha256", None)
    if not data["metadata"]:
        del data["metadata"]
    if data["retention_days"] is None:
        del data["retention_days"]
    if data["webhook_events"] is None:
        del data["webhook_events"]
    else:  # a filter is a set: the same events in another order are the same request
        data["webhook_events"] = sorted(data["webhook_events"])
    if data["truncation"] is None or (data["truncation"] == 1.0 and spec.variation is None):
        del data["truncation"]
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()
