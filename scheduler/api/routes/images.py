"""`/v1/jobs/{id}/images` (cursor pages with presigned URLs) and `/v1/jobs/{id}/manifest`.

The manifest is written once by the workers when the job finishes; review decisions (`db.reviews`, made in
the console) come later and change, so the manifest is served with its `review` column merged in at
download time (`approved`, `rejected` or `pending` for a delivered image, null for any other row); the
object in the store stays as the workers wrote it.

Only keys under the calling tenant's prefix are ever presigned: the check is on the key itself, not only
on the job's owner, so a row that somehow pointed elsewhere could still never leak another tenant's object.

Neither route holds more than its work needs: a listing reads its rows and gives back its session before it
presigns; a manifest download counts against `MANIFEST_DOWNLOADS_PER_TENANT` before any work (the console's
downloads too) and reads on threads of its own (`ManifestDownloads`), never the shared pool.
"""

from __future__ import annotations

import json
import tempfile
import threading
from collections.abc import AsyncIterator, Callable, Generator, Iterator, Mapping, Sequence
from typing import Annotated, Any, Literal

import anyio
import anyio.to_thread
from fastapi import APIRouter, Query
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response, StreamingResponse
from sqlalchemy import select
from starlette.types import Receive, Scope, Send

from db.images import manifest_keys
from db.jobs import get_job
from db.reviews import ReviewDecisions, ReviewState, review_decisions, where_review_state
from db.status import ImageStatus
from db.tables import Image
from scheduler.api.cursors import decode_cursor, encode_cursor
from scheduler.api.deps import Services, ServicesDep, TenantDep
from scheduler.api.limits import LoopThreads
from scheduler.api.problems import COMMON_ERRORS, problem_doc
from scheduler.api.schemas import ImagePage
from scheduler.api.views import image_public
from scheduler.errors import JobStateError, RateLimitedError, RequestValidationError

router = APIRouter(prefix="/v1", tags=["images"])

MANIFEST_CHUNK_BYTES = 256 * 1024  # a JSONL manifest is read and sent this much at a time
MANIFEST_MEDIA_TYPES = {"jsonl": "application/x-ndjson", "parquet": "application/vnd.apache.parquet"}
MANIFEST_DOWNLOADS_PER_TENANT = 2  # manifest downloads of one tenant in progress at once in one API process
MANIFEST_DOWNLOAD_THREADS = 8  # threads of the manifest downloads (store reads, Parquet rewrites) per process
MANIFEST_RETRY_AFTER_SECONDS = 5  # what a tenant over its downloads is told to wait


def tenant_owns_key(tenant_id: str, key: str) -> bool:
    """True when `key` lies under the tenant's prefix (`<tenant>/...`) and so may be presigned for it."""
    return key.startswith(f"{tenant_id}/") and "/../" not in f"/{key}/"


@router.get(
    "/jobs/{job_id}/images", response_model=ImagePage, summary="List a job's images", responses=COMMON_ERRORS
)
async def list_images(
    job_id: str,
    services: ServicesDep,
    tenant: TenantDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
    review: Annotated[
        ReviewState | None,
        Query(description="Only delivered images in this review state (decisions made in the console)."),
    ] = None,
) -> ImagePage:
    """The job's images in index order, each with a presigned GET URL and its expiry."""
    # The rows are read and their session closed before anything is presigned (up to 1,000 URLs, a quarter of
    # a second of CPU), so presigning holds neither a request-session slot nor a pooled connection. The slot
    # is waited for on the event loop, as `SessionDep` does.
    async with services.session_slot():
        rows = await run_in_threadpool(
            read_image_rows, services, tenant.id, job_id, cursor, review, limit + 1
        )
    return await run_in_threadpool(presign_image_page, services, tenant.id, rows, limit)


def read_image_rows(
    services: Services,
    tenant_id: str,
    job_id: str,
    cursor: str | None,
    review: ReviewState | None,
    count: int,
) -> Sequence[Image]:
    """Up to `count` of the job's image rows after the cursor, in index order, detached from their session
    (closed when this returns). `NotFoundError` for another tenant's job."""
    with services.read_sessions() as session:
        job = get_job(session, job_id, tenant_id=tenant_id)
        query = select(Image).where(Image.job_id == job.id)
        if review is not None:
            query = where_review_state(query, review)
        if cursor:
            (after,) = decode_cursor(cursor, arity=1)
            if not isinstance(after, int) or isinstance(after, bool):
                raise RequestValidationError(
                    "cursor", "opaque_cursor", "cursor: not a cursor this API issued"
                )
            query = query.where(Image.index > after)
        return session.scalars(query.order_by(Image.index).limit(count)).all()


def presign_image_page(services: Services, tenant_id: str, rows: Sequence[Image], limit: int) -> ImagePage:
    """The page of the first `limit` rows, each with a presigned URL (only keys under the tenant's prefix), and
    the cursor of the next page when `rows` holds more."""
    page = rows[:limit]
    ttl = services.presign_ttl_seconds
    data = []
    for image in page:
        url = expires = None
        if image.key and tenant_owns_key(tenant_id, image.key):
            presigned = services.store.presign(image.key, expires_in_seconds=ttl)
            url, expires = presigned.url, presigned.expires_at
        data.append(image_public(image, url, expires))
    next_cursor = encode_cursor(page[-1].index) if len(rows) > limit else None
    return ImagePage(data=data, next_cursor=next_cursor)


@router.get(
    "/jobs/{job_id}/manifest",
    summary="Download a finished job's manifest",
    response_class=Response,
    responses={
        **COMMON_ERRORS,
        200: {
            "description": "JSONL (one object per image) or Parquet.",
            "content": {
                "application/x-ndjson": {
                    "example": '{"index":0,"sku":"SKU-1","category":"sneaker","key":"t/jobs/j/SKU-1/00000000.png",'
                    '"sha256":"…","seed":7,"model_version":"fashion-cgan@1","status":"succeeded","error":null,"review":"pending"}\n'
                },
                "application/vnd.apache.parquet": {},
            },
        },
        409: problem_doc("The job has not finished yet: no manifest."),
    },
)
async def get_manifest(
    job_id: str,
    services: ServicesDep,
    tenant: TenantDep,
    format: Annotated[Literal["jsonl", "parquet"], Query(description="Manifest format.")] = "jsonl",
) -> Response:
    """The manifest the workers wrote when the job finished: index, sku, category, key, sha256, seed, model
    version, status and error for every image, with the `review` column as it stands now.

    At most 2 of a tenant's manifest downloads (API and console together) run at once on one API process;
    one more is a 429 with `Retry-After`."""
    return await manifest_answer(
        tenant.id,
        lambda: open_reviewed_manifest(services, tenant.id, job_id, format),
        media_type=MANIFEST_MEDIA_TYPES[format],
        filename=f"{job_id}.{format}",
    )


class ManifestDownloads:
    """The manifest downloads in progress in this process, per tenant, and the threads they read on.

    A download is counted from before its first read until its answer's last piece is sent or its client goes
    away: at most `per_tenant` of one tenant's at once, one more refused at once (no waiting, so nothing is
    held for it). Their reads (the store, the Parquet rewrite) run on `threads` threads of their own, never
    the shared pool; a download waiting for one waits on the event loop."""

    def __init__(
        self, per_tenant: int = MANIFEST_DOWNLOADS_PER_TENANT, threads: int = MANIFEST_DOWNLOAD_THREADS
    ):
        self.per_tenant = per_tenant
        self._running: dict[str, int] = {}
        self._lock = threading.Lock()  # apps on several event loops (tests) may share this process
        self._threads = LoopThreads("manifest", threads)

    def start(self, tenant_id: str) -> None:
        """Count one download of the tenant; `RateLimitedError` when it already has `per_tenant` running."""
        with self._lock:
            running = self._running.get(tenant_id, 0)
            if running >= self.per_tenant:
                raise RateLimitedError(
                    f"{running} manifest downloads of this tenant are in progress: at most {self.per_tenant}",
                    retry_after_seconds=MANIFEST_RETRY_AFTER_SECONDS,
                )
            self._running[tenant_id] = running + 1

    def finish(self, tenant_id: str) -> None:
        """Uncount one download of the tenant (the tenant is forgotten at zero)."""
        with self._lock:
            running = self._running.get(tenant_id, 0) - 1
            if running > 0:
                self._running[tenant_id] = running
            else:
                self._running.pop(tenant_id, None)

    def running(self, tenant_id: str) -> int:
        """The tenant's downloads in progress (for tests and metrics)."""
        with self._lock:
            return self._running.get(tenant_id, 0)

    def threads(self) -> anyio.CapacityLimiter:
        """This event loop's threads for manifest reads."""
        return self._threads.limiter()


MANIFEST_DOWNLOADS = ManifestDownloads()  # per API process, shared by `/v1` and the console


async def manifest_answer(
    tenant_id: str,
    open_pieces: Callable[[], Generator[bytes]],
    *,
    media_type: str,
    filename: str,
    downloads: ManifestDownloads = MANIFEST_DOWNLOADS,
) -> StreamingResponse:
    """A manifest download: counted against the tenant's bound first (`RateLimitedError` over it, before any
    work), then `open_pieces()` (which reads the first piece, so a missing job or object is an error before the
    answer starts) and every later piece on the downloads' own threads. The count ends with the answer."""
    downloads.start(tenant_id)
    try:
        pieces = await anyio.to_thread.run_sync(open_pieces, limiter=downloads.threads())
    except BaseException:
        downloads.finish(tenant_id)
        raise
    return ManifestAnswer(
        pieces,
        downloads.threads(),
        on_end=lambda: downloads.finish(tenant_id),
        media_type=media_type,
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


class ManifestAnswer(StreamingResponse):
    """A streamed manifest whose pieces are read on `threads`; when the answer ends, however it ends (sent,
    client gone, error), the pieces are closed (temporary files removed, the store's stream released) and
    `on_end` runs."""

    def __init__(
        self,
        pieces: Generator[bytes],
        threads: anyio.CapacityLimiter,
        *,
        on_end: Callable[[], None],
        media_type: str,
        headers: Mapping[str, str],
    ) -> None:
        self.pieces, self.threads, self.on_end = pieces, threads, on_end
        super().__init__(self._read(), media_type=media_type, headers=headers)

    async def _read(self) -> AsyncIterator[bytes]:
        while (
            piece := await anyio.to_thread.run_sync(next, self.pieces, None, limiter=self.threads)
        ) is not None:
            yield piece

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            try:
                self.pieces.close()  # not running: a read on its thread is waited for, even when cancelled
            finally:
                self.on_end()


def review_value(row: Mapping[str, Any], decisions: Mapping[int, str]) -> str | None:
    """The `review` column of one manifest row: the decision, `pending`, or None when it is not a delivered
    image of this job (failed, rejected by the gate, or skipped as delivered by an earlier job)."""
    if row.get("status") != ImageStatus.SUCCEEDED.value or not row.get("key"):
        return None
    return decisions.get(int(row["index"]), ReviewState.PENDING.value)


# Rows of a Parquet manifest converted at a time when its review column is added (one batch in memory).
PARQUET_BATCH_ROWS = 16_384


def reviewed_parquet(pieces: Iterator[bytes], decisions: Mapping[int, str]) -> Generator[bytes]:
    """The Parquet manifest read as `pieces`, rewritten with a `review` column, as pieces to send.

    Parquet keeps its footer at the end, so neither side can be a pure stream: the stored object is spooled
    to a temporary file, rewritten batch by batch (`PARQUET_BATCH_ROWS` rows in memory) into a second one, and
    that file is sent `MANIFEST_CHUNK_BYTES` at a time. Memory stays bounded by a batch and a piece whatever
    the job's size; both files are removed when the answer ends (or the client goes away).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    with tempfile.TemporaryFile() as target:
        with tempfile.TemporaryFile() as source:
            for piece in pieces:
                source.write(piece)
            source.seek(0)
            stored = pq.ParquetFile(source)
            schema = stored.schema_arrow
            if "review" in schema.names:
                schema = schema.remove(schema.get_field_index("review"))
            schema = schema.append(pa.field("review", pa.string()))
            with pq.ParquetWriter(target, schema, compression="zstd") as writer:
                for batch in stored.iter_batches(batch_size=PARQUET_BATCH_ROWS):
                    table = pa.Table.from_batches([batch])
                    if "review" in table.column_names:
                        table = table.drop(["review"])
                    rows = table.select(["index", "status", "key"]).to_pylist()
                    review = pa.array([review_value(row, decisions) for row in rows], pa.string())
                    writer.write_table(table.append_column("review", review))
        # The stored copy is closed (its disk space freed) once the rewrite is done, not after the sending.
        target.seek(0)
        while piece := target.read(MANIFEST_CHUNK_BYTES):
            yield piece


def reviewed_jsonl(pieces: Iterator[bytes], decisions: Mapping[int, str]) -> Generator[bytes]:
    """The JSONL manifest read as `pieces`, with the `review` column, one output piece per input piece: at
    most one piece and one line are held at a time."""
    pending = b""
    for piece in pieces:
        lines = (pending + piece).split(b"\n")
        pending = lines.pop()
        out = b"".join(_reviewed_line(line, decisions) for line in lines if line.strip())
        if out:
            yield out
    if pending.strip():
        yield _reviewed_line(pending, decisions)


def _reviewed_line(line: bytes, decisions: Mapping[int, str]) -> bytes:
    row = json.loads(line)
    row["review"] = review_value(row, decisions)
    return json.dumps(row, sort_keys=True, separators=(",", ":")).encode() + b"\n"


def open_reviewed_manifest(services: Services, tenant_id: str, job_id: str, format: str) -> Generator[bytes]:
    """A finished job's manifest with its current `review` column, as pieces to send, read from the store
    `MANIFEST_CHUNK_BYTES` at a time: JSONL line by line, Parquet through temporary files (`reviewed_parquet`).
    The first piece is made here, so a missing object is an error before the answer starts; closing the
    pieces releases the store's stream and the temporary files. `NotFoundError` for another tenant's job,
    `JobStateError` before the job has finished."""
    key, decisions = _manifest_key(services, tenant_id, job_id, format)
    rewrite = reviewed_jsonl if format == "jsonl" else reviewed_parquet
    pieces = rewrite(services.store.iter_chunks(key, MANIFEST_CHUNK_BYTES), decisions)
    try:
        first = next(pieces, b"")
    except BaseException:
        pieces.close()
        raise
    return _after(first, pieces)


def _after(first: bytes, rest: Generator[bytes]) -> Generator[bytes]:
    """`first`, then `rest`; closing this closes `rest`."""
    try:
        yield first
        yield from rest
    finally:
        rest.close()


def _manifest_key(
    services: Services, tenant_id: str, job_id: str, format: str
) -> tuple[str, ReviewDecisions]:
    with services.read_sessions() as session:
        job = get_job(session, job_id, tenant_id=tenant_id)
        decisions = review_decisions(session, job.id, size=job.images_total)
    if not job.manifest_key:
        raise JobStateError(f"job {job_id} is {job.status.value}; its manifest is written when it finishes")
    jsonl_key, parquet_key = manifest_keys(tenant_id, job.id)
    key = jsonl_key if format == "jsonl" else parquet_key
    if not tenant_owns_key(tenant_id, key):  # pragma: no cover - manifest_keys builds tenant keys
        raise JobStateError("manifest outside the tenant's prefix")
    return key, decisions
