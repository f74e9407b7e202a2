"""Console pages of jobs and images: the jobs list, a job's image grid, one image, review decisions, downloads.

Every lookup is scoped to the signed-in tenant exactly as `/v1` scopes it (`get_job(..., tenant_id=...)`,
object keys checked against the tenant's prefix): another tenant's job or image is a 404 page.
Image bytes are served by the console itself from the object store (one object per tile), so the grid works
with every store, `file://` included, and never hands the browser a presigned URL.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import json
import tarfile
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import urlencode

from fastapi import APIRouter, Form, Query, Request
from fastapi import Path as PathParam
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session

from db.console_sessions import SignedIn
from db.engine import transaction
from db.errors import NotFoundError, ObjectNotFoundError, PlanningError
from db.job_specs import LATENT_CONTROL_OPTION, MAX_IMAGES_PER_JOB, parse_metadata_pairs, split_model_ref
from db.jobs import get_job
from db.reviews import (
    MAX_NOTE_CHARS,
    ReviewDecision,
    ReviewState,
    count_reviews,
    delivered,
    record_reviews,
    review_join,
    review_state_condition,
)
from db.status import JOB_TERMINAL, ImageStatus, JobStatus
from db.tables import Image, ImageReview, Job, JobItem, ModelVersion
from scheduler.api.cursors import decode_cursor, encode_cursor
from scheduler.api.routes.images import manifest_answer, open_reviewed_manifest, tenant_owns_key
from scheduler.client import spreadsheet_safe
from scheduler.console.auth import Console, ConsoleDep, CsrfUserDep, UserDep, ViewerDep
from scheduler.console.pages import ConsoleNotFoundError, render
from scheduler.console.provenance import embedded_provenance
from scheduler.errors import JobStateError, RequestValidationError
from scheduler.webhooks import enqueue_job_reviewed, job_reviewed_target

router = APIRouter(prefix="/console", include_in_schema=False)
T = TypeVar("T")

MAX_REVIEW_BATCH = 1000  # images per review request
REJECTED_SHOWN = 20  # gate-rejected / failed images listed apart on the job page
IMAGE_MEDIA_TYPES = {"png": "image/png", "webp": "image/webp"}
MAX_SHARD_BYTES = 512 * 1024 * 1024  # a tar job's shard larger than this is not opened for one image
SHARD_READ_BYTES = 1 << 20  # a shard is read this much at a time when one image is taken from it
MAX_SHARD_MEMBER_BYTES = 64 * 1024 * 1024  # an image member larger than this is not read
MAX_CATEGORY_OPTIONS = 200  # categories offered by a job page's filter (a model's categories, at most)
MAX_MODEL_OPTIONS = 200  # model versions offered by the jobs page's filter (those the tenant has used)
TileStatus = Literal["succeeded", "rejected", "failed"]
Any_ = Literal[""]  # what a filter form sends for "any"
# An image index as a URL names it: bounded before any query (PostgreSQL would refuse a bigger one with a 500).
IndexParam = Annotated[int, PathParam(ge=0, le=MAX_IMAGES_PER_JOB)]
MAX_INDEX_DIGITS = len(str(MAX_IMAGES_PER_JOB))


def _job_for(session: Session, job_id: str, user: SignedIn, *, for_update: bool = False) -> Job:
    """The tenant's job, or the console's 404 page (also for another tenant's job)."""
    try:
        return get_job(session, job_id, tenant_id=user.tenant.id, for_update=for_update)
    except NotFoundError as exc:
        raise ConsoleNotFoundError(str(exc)) from exc


def _model_ref(model: ModelVersion | None) -> str:
    return f"{model.name}@{model.version}" if model else "—"


def _progress(job: Job) -> float:
    finished = job.images_done + job.images_failed + job.images_rejected
    return min(1.0, finished / job.images_total) if job.images_total else 0.0


def _job_summary(job: Job, model: ModelVersion | None) -> dict[str, Any]:
    """What the jobs list and the job page show of a job (and what their polling reads as JSON)."""
    return {
        "id": job.id,
        "status": job.status.value,
        "terminal": job.status in JOB_TERMINAL,
        "model": _model_ref(model),
        "progress": _progress(job),
        "images_total": int(job.images_total),
        "images_done": int(job.images_done),
        "images_failed": int(job.images_failed),
        "images_rejected": int(job.images_rejected),
        "created_at": job.created_at,
        "finished_at": job.finished_at,
        "error": job.error,
        "metadata": dict(job.job_metadata or {}),
    }


# -- the jobs list ---------------------------------------------------------------------------------------


@router.get("/jobs", response_class=HTMLResponse)
def jobs_page(
    request: Request,
    console: ConsoleDep,
    user: UserDep,
    status: Annotated[JobStatus | Any_ | None, Query()] = None,
    model: Annotated[str | None, Query(max_length=200)] = None,
    metadata: Annotated[str | None, Query(max_length=600)] = None,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
) -> Response:
    """The tenant's jobs, newest first, filtered by status, model and one metadata key=value, a page at a time."""
    status = status or None  # "" is the form's "any"
    try:  # the API's rule for a metadata filter, checked before any query
        labels = parse_metadata_pairs([metadata]) if metadata else {}
    except PlanningError as exc:
        raise RequestValidationError(exc.field, exc.rule, str(exc)) from exc
    limit = console.settings.jobs_page_size
    with console.services.read_sessions() as session:
        query = (
            select(Job, ModelVersion)
            .join(ModelVersion, ModelVersion.id == Job.model_version_id, isouter=True)
            .where(Job.tenant_id == user.tenant.id)
        )
        if status is not None:
            query = query.where(Job.status == status)
        for key, value in labels.items():
            query = query.where(Job.job_metadata[key].as_string() == value)
        if model:
            try:  # a version is 1 to 9 ASCII digits ('²' passed isdigit(), 10**20 overflowed SQLite: 500s)
                name, version = split_model_ref(model)
            except PlanningError as exc:
                raise RequestValidationError("model", "model_ref", str(exc)) from None
            query = query.where(ModelVersion.name == name)
            if version is not None:
                query = query.where(ModelVersion.version == version)
        if cursor:
            created, last_id = decode_cursor(cursor, arity=2)
            created_at = _parse_time(created)
            query = query.where(
                or_(Job.created_at < created_at, and_(Job.created_at == created_at, Job.id < str(last_id)))
            )
        rows = session.execute(query.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit + 1)).all()
        # The model versions this tenant has used: one (tenant_id, model_version_id) index probe per registered
        # version, not a DISTINCT over every job of the tenant on every page view.
        used = (
            select(Job.id)
            .where(Job.tenant_id == user.tenant.id, Job.model_version_id == ModelVersion.id)
            .exists()
        )
        models = session.execute(
            select(ModelVersion.name, ModelVersion.version)
            .where(used)
            .order_by(ModelVersion.name, ModelVersion.version)
            .limit(MAX_MODEL_OPTIONS)
        ).all()
    page = rows[:limit]
    next_cursor = None
    if len(rows) > limit:
        last = page[-1][0]
        next_cursor = encode_cursor(last.created_at.isoformat(), last.id)
    return render(
        console,
        request,
        "jobs.html",
        user,
        jobs=[_job_summary(job, row_model) for job, row_model in page],
        statuses=[value.value for value in JobStatus],
        models=[f"{name}@{version}" for name, version in models],
        status=status.value if status else "",
        model=model or "",
        metadata=metadata or "",
        next_cursor=next_cursor,
    )


def _parse_time(value: object) -> dt.datetime:
    try:
        if not isinstance(value, str):
            raise ValueError("not a timestamp")
        parsed = dt.datetime.fromisoformat(value)
        if parsed.tzinfo is None:
            raise ValueError("naive timestamp")
        return parsed
    except ValueError as exc:
        raise RequestValidationError(
            "cursor", "opaque_cursor", "cursor: not a cursor this console issued"
        ) from exc


# -- a job's page and its grid ---------------------------------------------------------------------------


@dataclass(frozen=True)
class TileFilter:
    """The grid's filters: category, image status, review state."""

    category: str | None
    status: TileStatus | None
    review: ReviewState | None

    def query_string(self) -> str:
        """These filters as URL query parameters (for the next-page and download links)."""
        parts = []
        if self.category:
            parts.append(("category", self.category))
        if self.status:
            parts.append(("status", self.status))
        if self.review:
            parts.append(("review", self.review.value))
        return urlencode(parts)  # a category's `&`, `#` or `+` stays inside its value


def _tiles(
    session: Session, job: Job, filters: TileFilter, *, after: int | None, limit: int
) -> tuple[list[tuple[Image, ImageReview | None]], int | None]:
    """One page of the grid in index order (keyset on the job's unique (job, index)), and the next `after`."""
    query = select(Image, ImageReview).outerjoin(ImageReview, review_join()).where(Image.job_id == job.id)
    if filters.category:
        query = query.where(Image.category == filters.category)
    if filters.review is not None:
        query = query.where(review_state_condition(filters.review))  # delivered images only
    elif filters.status is None:
        query = query.where(delivered())  # the grid shows delivered images; the rest are listed apart
    if filters.status is not None:
        query = query.where(Image.status == ImageStatus(filters.status))
    if after is not None:
        query = query.where(Image.index > after)
    rows = session.execute(query.order_by(Image.index).limit(limit + 1)).all()
    page: list[tuple[Image, ImageReview | None]] = [(image, review) for image, review in rows[:limit]]
    return page, (page[-1][0].index if len(rows) > limit else None)


def _tile(job: Job, image: Image, review: ImageReview | None) -> dict[str, Any]:
    return {
        "index": int(image.index),
        "sku": image.sku,
        "category": image.category,
        "status": image.status.value,
        "score": image.score,
        "redraws": int(image.redraws or 0),
        "error": image.error,
        # A tar job's tiles name their shard instead: one shard per tile would be read for a single grid page.
        "has_file": bool(image.key) and (image.key or "").rsplit(".", 1)[-1] in IMAGE_MEDIA_TYPES,
        "in_shard": (image.key or "").endswith(".tar"),
        "reviewable": image.status is ImageStatus.SUCCEEDED and bool(image.key),
        "review": review.decision.value
        if review
        else ("pending" if image.status is ImageStatus.SUCCEEDED else None),
        "review_by": review.reviewer_name or review.reviewer_key_id if review else None,
        "review_note": review.note if review else None,
        "url": f"/console/jobs/{job.id}/images/{int(image.index)}",
    }


def _filters(
    category: str | None, status: TileStatus | Any_ | None, review: ReviewState | Any_ | None
) -> TileFilter:
    """The grid's filters from the query; "" (a filter form's "any") is no filter."""
    return TileFilter(category or None, status or None, review or None)


@router.get("/jobs/{job_id}", response_class=HTMLResponse)
def job_page(
    request: Request,
    job_id: str,
    console: ConsoleDep,
    user: UserDep,
    category: Annotated[str | None, Query(max_length=128)] = None,
    status: Annotated[TileStatus | Any_ | None, Query()] = None,
    review: Annotated[ReviewState | Any_ | None, Query()] = None,
) -> Response:
    """A job: its progress, counts, downloads, the first page of its grid and its rejected images apart."""
    filters = _filters(category, status, review)
    with console.services.read_sessions() as session:
        job = _job_for(session, job_id, user)
        model = session.get(ModelVersion, job.model_version_id)
        tiles, next_after = _tiles(session, job, filters, after=None, limit=console.settings.page_size)
        rejected: list[Image] = []
        if job.images_rejected + job.images_failed > 0:  # the counters spare a scan of a job without any
            rejected = list(
                session.scalars(
                    select(Image)
                    .where(
                        Image.job_id == job.id, Image.status.in_([ImageStatus.REJECTED, ImageStatus.FAILED])
                    )
                    .order_by(Image.index)
                    .limit(REJECTED_SHOWN)
                )
            )
        # Distinct in SQL: a job of 100,000 SKU items sends its few categories, not one row per item.
        categories = list(
            session.scalars(
                select(JobItem.category)
                .where(JobItem.job_id == job.id)
                .distinct()
                .order_by(JobItem.category)
                .limit(MAX_CATEGORY_OPTIONS)
            )
        )
        reviews = count_reviews(session, job.id, delivered_total=job.images_done)
    return render(
        console,
        request,
        "job.html",
        user,
        job=_job_summary(job, model),
        seed=job.seed,
        output_format=job.output_format,
        has_manifest=bool(job.manifest_key),
        tiles=[_tile(job, image, row) for image, row in tiles],
        next_after=next_after,
        rejected=[_tile(job, image, None) for image in rejected],
        more_rejected=int(job.images_rejected + job.images_failed) > len(rejected),
        categories=categories,
        filters=filters,
        reviews=reviews,
    )


@router.get("/jobs/{job_id}/tiles", response_class=HTMLResponse)
def job_tiles(
    request: Request,
    job_id: str,
    console: ConsoleDep,
    user: UserDep,
    after: Annotated[int, Query(ge=-1, le=MAX_IMAGES_PER_JOB)],
    category: Annotated[str | None, Query(max_length=128)] = None,
    status: Annotated[TileStatus | Any_ | None, Query()] = None,
    review: Annotated[ReviewState | Any_ | None, Query()] = None,
) -> Response:
    """The next page of the grid after index `after`, as list items (fetched while scrolling)."""
    filters = _filters(category, status, review)
    with console.services.read_sessions() as session:
        job = _job_for(session, job_id, user)
        tiles, next_after = _tiles(session, job, filters, after=after, limit=console.settings.page_size)
    response = render(
        console,
        request,
        "tiles.html",
        user,
        job={"id": job.id},
        tiles=[_tile(job, image, row) for image, row in tiles],
    )
    response.headers["X-Next-After"] = "" if next_after is None else str(next_after)
    return response


@router.get("/jobs/{job_id}/summary")
def job_summary(job_id: str, console: ConsoleDep, user: UserDep) -> JSONResponse:
    """A job's status and counts as JSON (the job page polls it while the job runs)."""
    with console.services.read_sessions() as session:
        job = _job_for(session, job_id, user)
        model = session.get(ModelVersion, job.model_version_id)
        reviews = count_reviews(session, job.id, delivered_total=job.images_done)
    summary = _job_summary(job, model)
    summary["created_at"] = summary["created_at"].isoformat()
    summary["finished_at"] = summary["finished_at"].isoformat() if summary["finished_at"] else None
    summary["reviews"] = {
        "approved": reviews.approved,
        "rejected": reviews.rejected,
        "pending": reviews.pending,
    }
    return JSONResponse(summary)


# -- one image -------------------------------------------------------------------------------------------


def _image_for(session: Session, job: Job, index: int) -> Image:
    image = session.scalars(select(Image).where(Image.job_id == job.id, Image.index == index)).one_or_none()
    if image is None:
        raise ConsoleNotFoundError(f"image {index} of job {job.id!r} not found")
    return image


@router.get("/jobs/{job_id}/images/{index}", response_class=HTMLResponse)
async def image_page(
    request: Request, job_id: str, index: IndexParam, console: ConsoleDep, user: UserDep
) -> Response:
    """One image at full size: provenance, the sha256 check of its stored bytes, its row, its review."""

    def load() -> tuple[Job, Image, ModelVersion | None, ImageReview | None, Any, list[int]]:
        with console.services.read_sessions() as session:
            job = _job_for(session, job_id, user)
            image = _image_for(session, job, index)
            model = session.get(ModelVersion, job.model_version_id)
            review = session.scalars(
                select(ImageReview).where(ImageReview.job_id == job.id, ImageReview.index == index)
            ).one_or_none()
            made_into = jobs_made_from(session, job, index, user.tenant.id)
            neighbours = (
                session.execute(
                    select(Image.index)
                    .where(Image.job_id == job.id, Image.index.in_([index - 1, index + 1]))
                    .order_by(Image.index)
                )
                .scalars()
                .all()
            )
        return job, image, model, review, made_into, list(neighbours)

    job, image, model, review, made_into, neighbours = await run_in_threadpool(load)
    check = await read_stored(console, user, image, lambda: _check_stored_bytes(console, user, image))
    row = {column.name: getattr(image, column.key) for column in Image.__table__.columns}
    context = {
        "job": _job_summary(job, model),
        "tile": _tile(job, image, review),
        "review_row": review,
        "image_row": {
            name: (value.value if hasattr(value, "value") else value) for name, value in row.items()
        },
        "provenance": provenance_rows(job, image, model, check.embedded),
        "gate_score": image.score,
        "check": check,
        "made_from": made_from(job),
        "made_into": made_into,
        "previous": index - 1 if index - 1 in neighbours else None,
        "next": index + 1 if index + 1 in neighbours else None,
    }
    return render(console, request, "image.html", user, **context)


def _image_link(source: Any) -> dict[str, Any] | None:
    """A link to a recipe's source image ({"job_id", "index", ...}), or None when the recipe lacks one."""
    if not isinstance(source, dict) or not isinstance(source.get("job_id"), str):
        return None
    index = source.get("index")
    if not isinstance(index, int):
        return None
    return {
        "job_id": source["job_id"],
        "index": index,
        "url": f"/console/jobs/{source['job_id']}/images/{index}",
    }


def made_from(job: Job) -> list[dict[str, Any]]:
    """The images a creative-control job was made from (its recipe in `options`): a variation's source, an
    interpolation's start and end. The links open only if the image is the signed-in tenant's."""
    recipe = (job.options or {}).get(LATENT_CONTROL_OPTION) or {}
    found = []
    variation = recipe.get("variation") if isinstance(recipe, dict) else None
    if isinstance(variation, dict) and (link := _image_link(variation.get("source"))):
        found.append({"role": f"variation (strength {variation.get('strength')}) of", **link})
    interpolation = recipe.get("interpolation") if isinstance(recipe, dict) else None
    if isinstance(interpolation, dict):
        for end in ("start", "end"):
            if link := _image_link(interpolation.get(end)):
                found.append({"role": f"interpolation {end}", **link})
    return found


# Jobs made from an image come after it: the image page looks for them among at most this many of the
# tenant's jobs submitted since the image's job (newest first, on the (tenant_id, created_at) index), so a
# tenant with a million jobs costs one page view a bounded scan, not a pass over every recipe it has stored.
MADE_FROM_SCAN_JOBS = 2000
MADE_FROM_SHOWN = 20


def jobs_made_from(session: Session, job: Job, index: int, tenant_id: str) -> list[dict[str, Any]]:
    """The tenant's jobs (newest first, at most MADE_FROM_SHOWN) made from image `index` of `job`: its
    variations and the interpolations starting or ending at it, among the MADE_FROM_SCAN_JOBS newest jobs the
    tenant submitted since `job`."""
    recent = (
        select(Job.id, Job.status, Job.created_at, Job.images_total, Job.options)
        .where(Job.tenant_id == tenant_id, Job.created_at >= job.created_at, Job.id != job.id)
        .order_by(Job.created_at.desc())
        .limit(MADE_FROM_SCAN_JOBS)
        .subquery()
    )

    def names(*path: str) -> Any:
        return and_(
            recent.c.options[(LATENT_CONTROL_OPTION, *path, "job_id")].as_string() == job.id,
            recent.c.options[(LATENT_CONTROL_OPTION, *path, "index")].as_integer() == index,
        )

    rows = session.execute(
        select(recent.c.id, recent.c.status, recent.c.created_at, recent.c.images_total)
        .where(
            or_(names("variation", "source"), names("interpolation", "start"), names("interpolation", "end"))
        )
        .order_by(recent.c.created_at.desc())
        .limit(MADE_FROM_SHOWN)
    ).all()
    return [
        {
            "id": id_,
            "status": status.value,
            "created_at": created,
            "images": total,
            "url": f"/console/jobs/{id_}",
        }
        for id_, status, created, total in rows
    ]


@dataclass(frozen=True)
class StoredBytesCheck:
    """The console's check of an image: the stored object's sha256 and size against its SQL row, and the
    provenance fields the file states about itself."""

    checked: bool
    matches: bool
    sha256: str | None
    size_bytes: int | None
    message: str
    embedded: dict[str, str] = field(default_factory=dict)


# Provenance fields the image and job rows also hold; the file's other fields (backend, device_kind, dtype,
# compute_batch, ai_generated) are shown as the file states them.
def _row_provenance(job: Job, image: Image, model: ModelVersion | None) -> dict[str, str | None]:
    return {
        "model_version": _model_ref(model) if model else None,
        "checkpoint_sha256": model.checkpoint_sha256 or None if model else None,
        "job_id": job.id,
        "index": str(image.index),
        "seed": str(job.seed),
        "category": image.category,
        "sku": image.sku,
        "redraw": str(image.redraws) if image.redraws else None,  # the file states a redraw only when > 0
    }


def provenance_rows(
    job: Job, image: Image, model: ModelVersion | None, embedded: dict[str, str]
) -> list[dict[str, Any]]:
    """One row per provenance field: what the file states, what SQL holds, and whether they agree."""
    rows_say = _row_provenance(job, image, model)
    rows = []
    for name in [*rows_say, *(name for name in embedded if name not in rows_say)]:
        in_file, in_rows = embedded.get(name), rows_say.get(name)
        if in_file is None and in_rows is None:
            continue
        agrees = None if name not in rows_say or not embedded else in_file == in_rows
        rows.append({"field": name, "file": in_file, "rows": in_rows, "agrees": agrees})
    return rows


class StoredObjectMissingError(Exception):
    """Raised when an image's object (or its member in a shard) is not in the store."""


def read_image_bytes(console: Console, user: SignedIn, image: Image) -> tuple[bytes, str]:
    """The image's file bytes and media type: its object, or its `<index:08d>.png` member when the row's key is
    a tar job's WebDataset shard. `ConsoleNotFoundError` when it has no file under the tenant's prefix;
    `StoredObjectMissingError` when the object or member is not there."""
    key = image.key
    extension = (key or "").rsplit(".", 1)[-1]
    if not key or not tenant_owns_key(user.tenant.id, key) or extension not in (*IMAGE_MEDIA_TYPES, "tar"):
        raise ConsoleNotFoundError(f"image {image.index} has no stored image file")
    store = console.services.store
    if extension != "tar":
        try:
            return store.get(key), IMAGE_MEDIA_TYPES[extension]
        except ObjectNotFoundError as exc:
            raise StoredObjectMissingError(f"the object {key} is missing from the store") from exc
    sizes = [info.size_bytes for info in store.list(key) if info.key == key]
    if not sizes:
        raise StoredObjectMissingError(f"the shard {key} is missing from the store")
    if sizes[0] > MAX_SHARD_BYTES:  # checked before reading it
        raise ConsoleNotFoundError(
            f"the shard {key} is over {MAX_SHARD_BYTES // (1024 * 1024)} MiB: not opened"
        )
    name = f"{int(image.index):08d}.png"
    try:
        # Read as a stream, a piece at a time, up to the member: one image of a shard of hundreds of MiB holds
        # a piece and the member, not the shard (this route has no rate limit: a grid fetches dozens a second).
        pieces = ChunkStream(store.iter_chunks(key, SHARD_READ_BYTES))
        with tarfile.open(fileobj=pieces, mode="r|") as archive:
            for member in archive:
                if member.name == name and member.isfile() and member.size <= MAX_SHARD_MEMBER_BYTES:
                    data = archive.extractfile(member)
                    if data is not None:
                        return data.read(), "image/png"
        raise KeyError(name)
    except (KeyError, tarfile.TarError, ObjectNotFoundError) as exc:
        raise StoredObjectMissingError(f"no member {name} in the shard {key}") from exc


class ChunkStream(io.RawIOBase):
    """A read-only file over an iterator of byte pieces (what `tarfile`'s stream mode reads from)."""

    def __init__(self, pieces: Iterator[bytes]) -> None:
        self.pieces, self.piece, self.offset = pieces, memoryview(b""), 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while self.offset >= len(self.piece):
            piece = next(self.pieces, b"")
            if not piece:
                return 0
            self.piece, self.offset = memoryview(piece), 0
        size = min(len(buffer), len(self.piece) - self.offset)
        buffer[:size] = self.piece[self.offset : self.offset + size]
        self.offset += size
        return size


async def read_stored(console: Console, user: SignedIn, image: Image, read: Callable[[], T]) -> T:
    """`read()` (which reads `image`'s stored bytes) off the event loop, never on the shared pool: a tar job's
    member on the shard threads (`Console.shard_reads`, since it may stream a shard of hundreds of MiB), any
    other image, one GET of a small object, on the image threads (`Console.image_reads`). Both are bounded per
    process and per tenant; a tenant over its bound is a 429 with `Retry-After`."""
    if (image.key or "").endswith(".tar"):
        return await console.shard_reads.run(user.tenant.id, read)
    return await console.image_reads.run(user.tenant.id, read)


def _check_stored_bytes(console: Console, user: SignedIn, image: Image) -> StoredBytesCheck:
    try:
        data, _ = read_image_bytes(console, user, image)
    except ConsoleNotFoundError as exc:
        return StoredBytesCheck(False, False, None, None, f"{exc} (nothing to check)")
    except StoredObjectMissingError as exc:
        return StoredBytesCheck(True, False, None, None, str(exc))
    digest = hashlib.sha256(data).hexdigest()
    matches = digest == image.sha256 and (image.size_bytes is None or image.size_bytes == len(data))
    message = (
        "the stored bytes match the row's sha256 and size"
        if matches
        else "the stored bytes do NOT match the row's sha256 or size"
    )
    return StoredBytesCheck(True, matches, digest, len(data), message, embedded_provenance(data))


@router.get("/jobs/{job_id}/images/{index}/file")
async def image_file(job_id: str, index: IndexParam, console: ConsoleDep, user: ViewerDep) -> Response:
    """The image's stored bytes (only keys under the tenant's prefix; a tar job's image from its shard).

    The row lookup and the GET run in one call on the image threads (`Console.image_reads`, bounded per
    tenant: this route has no rate limit), so a request holds no thread of the shared pool, waiting or not; a
    tar job's member is then read on the shard threads."""

    def read(image: Image) -> tuple[bytes, str]:
        try:
            return read_image_bytes(console, user, image)
        except StoredObjectMissingError as exc:
            raise ConsoleNotFoundError(str(exc)) from exc

    def lookup_and_read() -> tuple[Image, tuple[bytes, str] | None]:
        with console.services.read_sessions() as session:
            job = _job_for(session, job_id, user)
            image = _image_for(session, job, index)
        # The connection is back in the pool before the store is asked.
        return image, None if (image.key or "").endswith(".tar") else read(image)

    image, found = await console.image_reads.run(user.tenant.id, lookup_and_read)
    if found is None:
        found = await console.shard_reads.run(user.tenant.id, lambda: read(image))
    data, media_type = found
    # Deterministic keys: the bytes behind one (job, index) never change.
    return Response(data, media_type=media_type, headers={"Cache-Control": "private, max-age=86400"})


# -- review ----------------------------------------------------------------------------------------------


def parse_indices(text: str) -> list[int]:
    """`"3,4, 7"` → [3, 4, 7]; a 422 naming `indices` when it is empty, malformed or over the batch bound."""
    parts = [part.strip() for part in text.split(",") if part.strip()]
    if not parts:
        raise RequestValidationError("indices", "required", "indices: name at least one image index")
    if len(parts) > MAX_REVIEW_BATCH:
        raise RequestValidationError(
            "indices", "max_items", f"indices: at most {MAX_REVIEW_BATCH} images per review request"
        )
    # ASCII digits only ("²" is a digit to str.isdigit, not to int), and no more than an index can have.
    if not all(part.isascii() and part.isdigit() and len(part) <= MAX_INDEX_DIGITS for part in parts):
        raise RequestValidationError(
            "indices", "integers", "indices: comma-separated image indices (0, 1, ...)"
        )
    return [int(part) for part in parts]


@router.post("/jobs/{job_id}/reviews")
def review_images(
    request: Request,
    job_id: str,
    console: ConsoleDep,
    user: CsrfUserDep,
    decision: Annotated[ReviewDecision, Form()],
    indices: Annotated[str, Form(max_length=20 * MAX_REVIEW_BATCH)],
    note: Annotated[str, Form(max_length=MAX_NOTE_CHARS)] = "",
    back: Annotated[str, Form(max_length=2000)] = "",
) -> Response:
    """Approve or reject images of the job (one or many); JSON for the grid's script, else back to the page.

    When the job has finished and this decision leaves no delivered image pending, a `job.reviewed` webhook
    event goes into the outbox (once per job).
    """
    wanted = parse_indices(indices)
    with transaction(console.services.session_factory) as session:
        job = _job_for(session, job_id, user, for_update=True)
        try:
            count = record_reviews(
                session,
                job.id,
                wanted,
                decision,
                reviewer_key_id=user.key_id,
                reviewer_name=user.key_name,
                note=note.strip() or None,
            )
        except NotFoundError as exc:
            raise ConsoleNotFoundError(str(exc)) from exc
        reviews = count_reviews(session, job.id, delivered_total=job.images_done)
        if (
            job.status in JOB_TERMINAL
            and reviews.pending == 0
            and reviews.delivered > 0
            # Only when the event is still to be written: the exact pass reads every image row of the job,
            # under its row lock, and every later keystroke on a reviewed job would pay it again.
            and job_reviewed_target(session, job) is not None
        ):
            reviews = count_reviews(session, job.id)  # the exact pass, once the counters say all are decided
            if reviews.pending == 0:
                enqueue_job_reviewed(
                    session, job, {"approved": reviews.approved, "rejected": reviews.rejected}
                )
    counts = {"approved": reviews.approved, "rejected": reviews.rejected, "pending": reviews.pending}
    if "application/json" in request.headers.get("accept", ""):
        return JSONResponse(
            {"decision": decision.value, "indices": sorted(set(wanted)), "updated": count, "reviews": counts}
        )
    target = back if back.startswith(f"/console/jobs/{job_id}") else f"/console/jobs/{job_id}"
    return RedirectResponse(target, status_code=303)


# -- downloads -------------------------------------------------------------------------------------------

MANIFEST_CSV_COLUMNS = (
    "index", "sku", "category", "key", "sha256", "seed", "model_version", "status", "error", "score", "redraws",
    "review",
)  # fmt: skip


@router.get("/jobs/{job_id}/manifest.{fmt}")
async def manifest_download(
    job_id: str, fmt: Literal["jsonl", "parquet", "csv"], console: ConsoleDep, user: UserDep
) -> Response:
    """The finished job's manifest with its current `review` column: JSONL, Parquet or CSV.

    Streamed as the /v1 manifest route streams it, a piece at a time from the store: a download holds no
    more of a million-row manifest in memory than one piece. It counts against the same bound of downloads
    per tenant (`manifest_answer`: one more is a 429 with `Retry-After`) and reads on the same threads.
    """

    def open_pieces() -> Generator[bytes]:
        try:
            pieces = open_reviewed_manifest(
                console.services, user.tenant.id, job_id, "parquet" if fmt == "parquet" else "jsonl"
            )
        except NotFoundError as exc:
            raise ConsoleNotFoundError(str(exc)) from exc
        except JobStateError as exc:
            raise ConsoleNotFoundError(str(exc)) from exc
        return csv_pieces(pieces) if fmt == "csv" else pieces

    media = {"jsonl": "application/x-ndjson", "parquet": "application/vnd.apache.parquet", "csv": "text/csv"}
    return await manifest_answer(
        user.tenant.id, open_pieces, media_type=media[fmt], filename=f"{job_id}.{fmt}"
    )


def csv_pieces(jsonl_pieces: Iterable[bytes]) -> Generator[bytes]:
    """The manifest as CSV (`MANIFEST_CSV_COLUMNS`), a piece for each piece of whole JSONL lines; text that a
    spreadsheet would run as a formula is made text (`spreadsheet_safe`). Closing it closes `jsonl_pieces`
    (when they can be closed: the store's stream)."""
    out = io.StringIO()
    writer = csv.DictWriter(out, MANIFEST_CSV_COLUMNS, extrasaction="ignore")
    try:
        writer.writeheader()
        yield out.getvalue().encode()
        for piece in jsonl_pieces:
            out.seek(0)
            out.truncate()
            for line in piece.splitlines():
                if line.strip():
                    writer.writerow(spreadsheet_safe(json.loads(line)))
            yield out.getvalue().encode()
    finally:
        if isinstance(jsonl_pieces, Generator):
            jsonl_pieces.close()
