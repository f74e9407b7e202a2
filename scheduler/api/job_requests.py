"""Reading a `POST /v1/jobs` request: JSON (inline items or an `s3://` manifest) or a multipart upload, and
converting it into the domain's `JobSpec` for the one submit path (`db.planning.submit_job`).

FastAPI cannot declare one body with two media types, so the route reads the request itself and the
OpenAPI document gets both through `SUBMIT_BODY_OPENAPI`.
"""

from __future__ import annotations

from typing import Any, TypeVar

import pydantic
from fastapi import Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError as FastApiValidationError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from db.job_specs import JobSpec, SubmitLimits, parse_job_spec
from scheduler.api.deps import Services
from scheduler.api.item_manifests import manifest_format, parse_item_manifest, read_manifest_uri
from scheduler.api.schemas import ItemCreate, JobCreate
from scheduler.errors import RequestValidationError, UnsupportedMediaTypeError
from scheduler.settings import ApiSettings

MAX_IDEMPOTENCY_KEY_CHARS = 255
MULTIPART_PARTS = frozenset({"file", "spec"})  # any other part is a 400, as the document says
M = TypeVar("M", bound=pydantic.BaseModel)

SUBMIT_BODY_OPENAPI: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {"$ref": "#/components/schemas/JobCreate"},
                "examples": {
                    "inline": {
                        "summary": "Inline items",
                        "value": {
                            "model": "fashion-cgan",
                            "items": [
                                {"category": "sneaker", "count": 4, "sku": "SKU-10042"},
                                {"category": "dress", "count": 2},
                            ],
                            "seed": 7,
                        },
                    },
                    "s3": {
                        "summary": "Manifest in S3",
                        "value": {"manifest_uri": "s3://catalog/exports/missing-images.csv", "seed": 7},
                    },
                },
            },
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "additionalProperties": False,  # the route reads at most these two parts (more: 400)
                    "properties": {
                        "file": {
                            "type": "string",
                            "format": "binary",
                            "description": "CSV, JSONL or Parquet with columns sku, category, count.",
                        },
                        "spec": {
                            "type": "string",
                            "description": "JSON object with the other JobCreate fields (model, seed, queue, webhook_url, ...).",
                        },
                    },
                }
            },
        },
    }
}


# Routes that read their JSON body themselves, after the key and the rate limit (see `read_json_body`); the
# OpenAPI document still names the model (`json_body_openapi`; `scheduler.api.app` adds its schema).
def json_body_openapi(model: type[pydantic.BaseModel]) -> dict[str, Any]:
    """The `openapi_extra` of a route whose JSON body `read_json_body` reads as `model`."""
    schema = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


async def read_json_body(request: Request, model: type[M], *, other_media: str = "") -> M:
    """The request's JSON body as `model`: read only when the route asks (after its dependencies: the API key
    and the rate limit) and parsed off the event loop.

    FastAPI parses a declared body on the event loop before any dependency runs, so anyone, without a key,
    could make every request wait on the parse of a large body. Raises 415 for another content type and a
    422 naming each field that broke `model`.
    """
    content_type = request.headers.get("content-type", "")
    if content_type and not content_type.startswith("application/json"):
        raise UnsupportedMediaTypeError(f"content type {content_type!r}: send application/json{other_media}")
    body = await request.body()
    try:
        # Off the event loop: validating a 10 MiB body takes a CPU for a while, and every request waits on it.
        return await run_in_threadpool(model.model_validate_json, body or b"null")
    except pydantic.ValidationError as exc:
        raise _validation_error(exc) from exc


def _validation_error(exc: pydantic.ValidationError, *, part: str | None = None) -> FastApiValidationError:
    """The 422 of a body that broke JobCreate; `part` prefixes each field (the multipart `spec`)."""
    errors = exc.errors(include_url=False, include_context=False)
    if part is not None:
        errors = [{**error, "loc": (part, *error["loc"])} for error in errors]
    return FastApiValidationError(errors)


async def read_job_request(
    request: Request, services: Services, tenant_id: str
) -> tuple[JobCreate, list[ItemCreate]]:
    """The submitted job and its items, from a JSON body (inline items or `manifest_uri`) or a multipart upload.

    Raises `RequestValidationError` (422, naming the field) and `UnsupportedMediaTypeError` (415).
    """
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        form = await request.form(max_files=1, max_fields=2)
        unknown = sorted(set(form.keys()) - MULTIPART_PARTS)
        if unknown:
            raise StarletteHTTPException(
                400,
                f"multipart parts {', '.join(map(repr, unknown))} are not read: send only 'file' and 'spec'",
            )
        upload = form.get("file")
        spec_text = form.get("spec")
        if not isinstance(upload, UploadFile):
            raise RequestValidationError(
                "file", "required", "file: upload the manifest as the multipart part 'file'"
            )
        try:
            job_request = JobCreate.model_validate_json(
                spec_text if isinstance(spec_text, str) and spec_text else "{}"
            )
        except pydantic.ValidationError as exc:
            raise _validation_error(exc, part="spec") from exc
        if any(
            value is not None
            for value in (
                job_request.items,
                job_request.manifest_uri,
                job_request.variation,
                job_request.interpolation,
            )
        ):
            raise RequestValidationError(
                "spec",
                "one_source",
                "spec: with an uploaded file, omit items, manifest_uri, variation and interpolation",
            )
        fmt = manifest_format(upload.filename or "", upload.content_type)
        data = await upload.read()
        items = await run_in_threadpool(parse_item_manifest, data, fmt, settings=services.settings)
        return job_request, items
    job_request = await read_json_body(request, JobCreate, other_media=" or multipart/form-data")
    if job_request.variation is not None or job_request.interpolation is not None:
        return job_request, []  # the images come from the source images (checked by the submit path)
    if job_request.manifest_uri is not None:
        data, fmt = await run_in_threadpool(
            read_manifest_uri,
            job_request.manifest_uri,
            tenant_id=tenant_id,
            store=services.store,
            settings=services.settings,
        )
        items = await run_in_threadpool(parse_item_manifest, data, fmt, settings=services.settings)
        return job_request, items
    if not job_request.items:
        raise RequestValidationError("items", "required", "items: give items, manifest_uri, or upload a file")
    return job_request, job_request.items


def job_spec(request: JobCreate, items: list[ItemCreate]) -> JobSpec:
    """The domain request of an API request (items inline or read from a manifest); `PlanningError` names the
    field when the spec's own bounds refuse it."""
    values: dict[str, object] = {
        "model": request.model,
        "items": [item.model_dump(exclude_none=True) for item in items],
        "seed": request.seed,
        "output_format": request.output_format,
        "quality_gate": request.quality_gate.model_dump() if request.quality_gate else None,
        "chunk_size": request.chunk_size,
        "webhook_url": request.webhook_url,
        "truncation": request.truncation,
        "variation": request.variation.model_dump() if request.variation else None,
        "interpolation": request.interpolation.model_dump() if request.interpolation else None,
        "metadata": request.metadata,
        "retention_days": request.retention_days,
        "queue": request.queue,
        "webhook_events": request.webhook_events,
    }
    return parse_job_spec({key: value for key, value in values.items() if value is not None})


def submit_limits(settings: ApiSettings) -> SubmitLimits:
    """The operator's bounds on API submits, with the tenant quotas on."""
    return SubmitLimits(
        max_items_per_job=settings.max_items_per_job,
        max_images_per_item=settings.max_images_per_item,
        max_images_per_job=settings.max_images_per_job,
        max_chunks_per_job=settings.max_chunks_per_job,
        tenant_quotas=True,
        default_retention_days=settings.job_retention_days,
        max_retention_days=settings.max_job_retention_days,
    )


def check_idempotency_key(key: str | None) -> str | None:
    """The `Idempotency-Key` header, or a 422 when it is empty, too long or not printable."""
    if key is None:
        return None
    if not key or len(key) > MAX_IDEMPOTENCY_KEY_CHARS or not key.isprintable():
        raise RequestValidationError(
            "Idempotency-Key",
            "length",
            f"Idempotency-Key: 1 to {MAX_IDEMPOTENCY_KEY_CHARS} printable characters",
        )
    return key
