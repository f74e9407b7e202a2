"""Producing one chunk: claim → load → latents → forward → gate → encode + upload → rows → complete.

The stages overlap: batch k encodes and uploads in the pool while batch k+1 is forwarded, and with gate
overlap on (`CATALOGAN_GATE_OVERLAP`, the default on CUDA) batch k's quality gate runs in the context's gate
thread, on its own CUDA stream, while batch k+1 is forwarded.

A plain function of its dependencies (`ChunkContext`); the Celery task only parses the chunk id.

Safety, step by step:
- the claim is one UPDATE that bumps `attempt`; every later write is fenced by that attempt, so a worker
  that stalled past its lease cannot write rows or counters after another worker took over;
- image `i` depends on (model version, seed, i, category) alone, so any rerun writes identical bytes to
  identical keys (an upload that happened before a crash is simply overwritten with the same bytes);
- rows are upserted per batch (unique job + index): a rerun never duplicates a row;
- the chunk and the job counters move in one transaction at the end: counters count each chunk once.
"""

from __future__ import annotations

import bisect
import contextlib
import enum
import logging
import threading
import time
from collections.abc import Callable, Generator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from db.chunk_outcomes import cancel_chunk_counted, quarantine_chunk
from db.chunks import (
    ChunkItem,
    Lease,
    chunk_items,
    claim_chunk,
    complete_chunk,
    mark_enqueued,
    release_chunk,
    renew_lease,
)
from db.engine import transaction
from db.errors import StaleAttemptError
from db.images import (
    CONTENT_TYPES,
    ImageRecord,
    image_folder,
    image_key,
    upsert_images,
)
from db.jobs import JobProgress, is_cancel_requested, mark_job_running
from db.latent_control import control_of_options, provenance_fields
from db.pipeline_settings import WorkerSettings
from db.status import ImageStatus
from db.storage import ObjectStore
from db.tables import Chunk, Job, ModelVersion
from workers.encoding import Provenance, encode_with_digest
from workers.errors import InjectedFaultError
from workers.generator_cache import GeneratorCache, GeneratorLike
from workers.memorization import MEMORIZATION_METRICS_KEY, load_memorization_index
from workers.pixels import inference_fields, render_pixels
from workers.quality_gate import GatedImage, Scorer, apply_gate, evaluator_scorer, gate_settings
from workers.shards import (
    SHARD_CONTENT_TYPE,
    SHARD_FORMAT,
    SHARD_IMAGE_FORMAT,
    ShardMember,
    build_shard,
    shard_key,
)

logger = logging.getLogger(__name__)

# Seconds between the cancel checks (and lease renewals) of a chunk's batch loop.
SHARD_CHECK_SECONDS = 1.0

# Job option honoured only with CATALOGAN_TEST_FAULTS=1: chunks starting at these indices always fail.
FAULT_OPTION = "test_fail_chunk_starts"


class ChunkOutcome(enum.StrEnum):
    """How one run of the generate-chunk task ended."""

    SUCCEEDED = "succeeded"
    NOT_CLAIMED = "not_claimed"  # finished already, held by a live lease, or out of attempts
    CANCELLED = "cancelled"
    RELEASED = "released"  # graceful shutdown: pending again, republished
    STALE = "stale"  # another attempt took over; this one stopped writing
    RETRY = "retry"  # failed; released and republished with a delay
    QUARANTINED = "quarantined"


@dataclass
class ChunkContext:
    """Everything `generate_chunk` needs, built once per worker process."""

    session_factory: sessionmaker[Session]
    store: ObjectStore
    generators: GeneratorCache
    settings: WorkerSettings
    worker_name: str
    pool: ThreadPoolExecutor
    device: str = "cpu"
    # Called after the commit that finished a job's last chunk.
    on_job_finished: Callable[[str], object] = lambda job_id: None
    # (tenant id, queue) of a chunk that finished: publish the tenant's next held chunks (db.publish_window)
    on_chunk_finished: Callable[[str, str], object] = lambda tenant_id, queue: None
    # Called to rerun a released or failed chunk: (queue, chunk_id, countdown seconds).
    republish: Callable[[str, int, float | None], None] = lambda queue, chunk_id, countdown: None
    shutdown: threading.Event = field(default_factory=threading.Event)
    # Quality-gate scorers (the evaluator + the model version's memorization index), per model version id,
    # index sha256 and evaluator backend (the generator's).
    scorers: dict[tuple[int, str | None, str], Scorer] = field(default_factory=dict)
    # One thread that runs the quality gate of batch k while batch k+1 is forwarded (`gate_overlap`); None:
    # the gate runs in the batch loop's thread, after the forward pass.
    gate_pool: ThreadPoolExecutor | None = None


@dataclass(frozen=True, slots=True)
class ChunkPlan:
    """What a claimed chunk generates, read once after the claim."""

    lease: Lease
    job_id: str
    tenant_id: str
    seed: int
    output_format: str
    queue: str
    options: dict[str, Any]
    # The items of the chunk's range in index order: one, or several consecutive small ones (db.chunk_layout).
    items: tuple[ChunkItem, ...]
    model_version: ModelVersion
    # `time.monotonic()` when the claim took its lease. The batch loops count the time to the next renewal
    # from here, so a slow first model load (download, ONNX export) renews before the first batch.
    claimed_at: float

    @property
    def model_ref(self) -> str:
        """ "name@version" of the model version."""
        return f"{self.model_version.name}@{self.model_version.version}"

    def item_of(self, index: int) -> ChunkItem:
        """The item image `index` belongs to: its category, class index and SKU."""
        position = bisect.bisect_right(self.items, index, key=lambda item: item.start) - 1
        item = self.items[position]
        assert position >= 0 and item.start <= index < item.stop, f"index {index} outside the chunk's items"
        return item

    def segments(self, indices: Sequence[int]) -> list[tuple[ChunkItem, Sequence[int]]]:
        """Contiguous `indices` cut where the item changes: (item, its indices), in order."""
        cut: list[tuple[ChunkItem, Sequence[int]]] = []
        position = 0
        while position < len(indices):
            item = self.item_of(indices[position])
            end = min(len(indices), position + (item.stop - indices[position]))
            cut.append((item, indices[position:end]))
            position = end
        return cut


def log_extra(lease: Lease) -> dict[str, Any]:
    """Structured log fields for one attempt at one chunk."""
    return {"job_id": lease.job_id, "chunk_id": lease.chunk_id, "attempt": lease.attempt}


def _claim(ctx: ChunkContext, chunk_id: int) -> ChunkPlan | JobProgress | None:
    """Claim and read the chunk; cancel it at once when its job is being cancelled."""
    with transaction(ctx.session_factory) as session:
        lease = claim_chunk(
            session,
            chunk_id,
            worker=ctx.worker_name,
            lease_seconds=ctx.settings.lease_seconds,
            max_attempts=ctx.settings.max_attempts,
        )
        if lease is None:
            return None
        job = session.get(Job, lease.job_id)
        items = chunk_items(session, lease)
        assert job is not None and items, f"chunk {chunk_id}: no job or no items"
        if job.cancel_requested:
            progress = cancel_chunk_counted(session, chunk_id, attempt=lease.attempt)
            return progress if progress is not None else None
        mark_job_running(session, job.id)
        model_version = session.get(ModelVersion, job.model_version_id)
        assert model_version is not None
        return ChunkPlan(
            lease=lease,
            job_id=job.id,
            tenant_id=job.tenant_id,
            seed=int(job.seed),
            output_format=job.output_format,
            queue=job.queue,
            options=dict(job.options or {}),
            items=items,
            model_version=model_version,
            claimed_at=time.monotonic(),
        )


def _forward(generator: GeneratorLike, plan: ChunkPlan, indices: Sequence[int]) -> Any:
    """uint8 pixels (B, H, W, C) as a numpy array for the given image indices (`workers.pixels.render_pixels`).

    `generate` runs under `torch.inference_mode()` with bf16 autocast on CUDA and returns CPU pixels.
    """
    control = control_of_options(plan.options)  # the job's latent recipe (db.latent_control), or None
    classes = [plan.item_of(index).class_index for index in indices]  # a packed chunk mixes items
    return render_pixels(generator, plan.seed, classes, indices, control=control)


def _encode_and_upload(
    ctx: ChunkContext,
    plan: ChunkPlan,
    image: GatedImage,
    checkpoint_sha: str,
    inference: tuple[tuple[str, str], ...] = (),
) -> ImageRecord:
    if image.pixels is None:  # rejected by the quality gate: a row, no object
        return _rejected_record(plan, image)
    index = image.index
    item = plan.item_of(index)
    provenance = Provenance(
        model_version=plan.model_ref,
        checkpoint_sha256=checkpoint_sha,
        job_id=plan.job_id,
        index=index,
        seed=plan.seed,
        category=item.category,
        sku=item.sku,
        redraw=image.redraws,
        inference=inference,
        control=provenance_fields(control_of_options(plan.options), index),
    )
    encoded = encode_with_digest(image.pixels, plan.output_format, provenance)
    key = image_key(
        plan.tenant_id, plan.job_id, image_folder(item.category, item.sku), index, plan.output_format
    )
    ctx.store.put(key, encoded.data, content_type=CONTENT_TYPES[plan.output_format])
    return ImageRecord(
        index=index,
        category=item.category,
        sku=item.sku,
        key=key,
        sha256=encoded.sha256,
        size_bytes=len(encoded.data),
        width=encoded.width,
        height=encoded.height,
        score=image.score,
        redraws=image.redraws,
    )


def _rejected_record(plan: ChunkPlan, image: GatedImage) -> ImageRecord:
    item = plan.item_of(image.index)
    return ImageRecord.rejected(
        index=image.index,
        category=item.category,
        sku=item.sku,
        score=image.score,
        redraws=image.redraws,
        error=image.error,
    )


def _gated(
    ctx: ChunkContext, plan: ChunkPlan, generator: GeneratorLike, batch: Sequence[int], pixels: Any
) -> list[GatedImage]:
    """The batch's images after the job's quality gate (all accepted, unscored, when it has none)."""
    index_entry = (plan.model_version.metrics or {}).get(MEMORIZATION_METRICS_KEY)
    indexed = bool(index_entry)
    gate = gate_settings(plan.options, memorization_index=indexed)
    if gate is None:
        return [GatedImage(index, pixels[row], None, 0) for row, index in enumerate(batch)]
    # Keyed by the index too: a version that gets its index after this worker cached a scorer without one
    # (the shipped model, registered before its index was built) is scored with the index from then on.
    # The evaluator runs on the generator's backend (ONNX Runtime for an onnxruntime spec), so a job's gate
    # decisions are a function of its inference spec like its pixels.
    backend = str(getattr(getattr(generator, "spec", None), "backend", "eager"))  # doubles carry no spec
    cache_key = (plan.model_version.id, str(index_entry.get("sha256")) if index_entry else None, backend)
    scorer = ctx.scorers.get(cache_key)
    if scorer is None:
        index = load_memorization_index(ctx.store, plan.model_version) if indexed else None
        scorer = ctx.scorers[cache_key] = evaluator_scorer(index, device=ctx.device, backend=backend)
    # The gate scores and redraws one item's images at a time (the scorer takes one class per call); a
    # segment's pixel rows are the batch's, in order.
    gated: list[GatedImage] = []
    offset = 0
    for item, indices in plan.segments(batch):
        gated += apply_gate(
            generator,
            scorer,
            gate,
            seed=plan.seed,
            class_index=item.class_index,
            indices=indices,
            pixels=pixels[offset : offset + len(indices)],
            control=control_of_options(plan.options),
        )
        offset += len(indices)
    return gated


def _gated_on_device(
    ctx: ChunkContext, plan: ChunkPlan, generator: GeneratorLike, batch: Sequence[int], pixels: Any
) -> list[GatedImage]:
    """`_gated` in the gate thread: on CUDA on the thread's own stream, so its kernels overlap the forward's."""
    with _gate_stream(ctx.device):
        return _gated(ctx, plan, generator, batch, pixels)


_streams = threading.local()


def _gate_stream(device: str) -> contextlib.AbstractContextManager[Any]:
    """The calling thread's own CUDA stream on `device` (made once per thread); nothing on the CPU."""
    if not device.startswith("cuda"):
        return contextlib.nullcontext()
    import torch

    streams: dict[str, Any] = _streams.__dict__.setdefault("by_device", {})
    if device not in streams:
        streams[device] = torch.cuda.Stream(device=torch.device(device))
    return torch.cuda.stream(streams[device])


def _gated_batches(
    ctx: ChunkContext,
    plan: ChunkPlan,
    generator: GeneratorLike,
    before_batch: Callable[[], None],
) -> Generator[list[GatedImage], None, None]:
    """Every batch of the chunk's range, forwarded and gated, in order.

    `before_batch` runs in this thread before each forward pass (the shutdown, cancel and lease checks; it
    may raise `_Stop`). With `ctx.gate_pool`, batch k is gated in the gate thread while this thread forwards
    batch k+1: one batch is being gated at most, so at most two batches of pixels wait here. Nothing about
    an image depends on which thread gated it (the scorer computes in fixed blocks). Closing the iterator
    early (a stop, a failed upload) waits for the gate in flight, so no gate work outlives the chunk.
    """
    lease = plan.lease
    indices = range(lease.start_index, lease.stop_index)
    batch_size = ctx.settings.batch_size
    pending: Future[list[GatedImage]] | None = None
    try:
        for start in range(0, len(indices), batch_size):
            before_batch()
            batch = indices[start : start + batch_size]
            pixels = _forward(generator, plan, batch)  # (B, H, W, C) uint8
            if ctx.gate_pool is None:
                yield _gated(ctx, plan, generator, batch, pixels)
                continue
            following = ctx.gate_pool.submit(_gated_on_device, ctx, plan, generator, batch, pixels)
            if pending is not None:
                gated, pending = pending.result(), following
                yield gated
            else:
                pending = following
        if pending is not None:
            gated, pending = pending.result(), None
            yield gated
    finally:
        if pending is not None and not pending.cancel():
            wait_futures([pending])  # the gate of one batch: bounded; its result is dropped


def _encode_for_shard(
    plan: ChunkPlan,
    lease: Lease,
    image: GatedImage,
    checkpoint_sha: str,
    inference: tuple[tuple[str, str], ...] = (),
) -> tuple[ImageRecord, ShardMember | None]:
    """Encode one image as the PNG a `png` job would upload; its row points at the chunk's shard."""
    if image.pixels is None:  # rejected by the quality gate: a row, no member
        return _rejected_record(plan, image), None
    index = image.index
    item = plan.item_of(index)
    provenance = Provenance(
        plan.model_ref,
        checkpoint_sha,
        plan.job_id,
        index,
        plan.seed,
        item.category,
        item.sku,
        image.redraws,
        inference,
        provenance_fields(control_of_options(plan.options), index),
    )
    encoded = encode_with_digest(image.pixels, SHARD_IMAGE_FORMAT, provenance)
    key = shard_key(plan.tenant_id, plan.job_id, lease.start_index)
    metadata = {
        "index": index,
        "category": item.category,
        "sku": item.sku,
        "seed": plan.seed,
        "model_version": plan.model_ref,
        "sha256": encoded.sha256,
        "score": image.score,
        "redraws": image.redraws,
    }
    record = ImageRecord(
        index,
        item.category,
        item.sku,
        key,
        encoded.sha256,
        len(encoded.data),
        encoded.width,
        encoded.height,
        score=image.score,
        redraws=image.redraws,
    )
    return record, ShardMember(index, encoded.data, metadata)


def _run_shard_batches(
    ctx: ChunkContext, plan: ChunkPlan, generator: GeneratorLike
) -> tuple[Lease, list[ImageRecord], list[ImageRecord]]:
    """A tar job's chunk: forward, gate and encode (overlapped, `_gated_batches`) every batch, then PUT one shard
    of the chunk.

    No row is written before the shard is stored: the caller writes them all with the chunk's completion.
    A chunk stopped midway (cancel, shutdown) delivers nothing; a rerun writes the same shard bytes.
    Between batches the shutdown flag is read every time; the cancel flag and the lease renewal cost a
    transaction, so they run at most every `SHARD_CHECK_SECONDS` (a shard's batches are short).
    """
    checks = _BatchChecks(ctx, plan)
    checkpoint_sha = plan.model_version.checkpoint_sha256 or generator.checkpoint_sha256
    inference = inference_fields(generator)  # written into every file's provenance
    futures: list[Future[tuple[ImageRecord, ShardMember | None]]] = []
    try:
        with contextlib.closing(_gated_batches(ctx, plan, generator, checks)) as batches:
            for gated in batches:
                futures += [
                    ctx.pool.submit(_encode_for_shard, plan, checks.lease, image, checkpoint_sha, inference)
                    for image in gated
                ]
        encoded = [future.result() for future in futures]
    finally:
        for future in futures:
            future.cancel()
    lease = checks.lease
    members = [member for _, member in encoded if member is not None]
    if members:  # every image rejected: no shard
        key = shard_key(plan.tenant_id, plan.job_id, lease.start_index)
        ctx.store.put(key, build_shard(members), content_type=SHARD_CONTENT_TYPE)
    return lease, [], [record for record, _ in encoded]


def _check_fault(ctx: ChunkContext, plan: ChunkPlan) -> None:
    starts = plan.options.get(FAULT_OPTION) or []
    if ctx.settings.test_faults and plan.lease.start_index in starts:
        raise InjectedFaultError(f"injected fault for chunk starting at index {plan.lease.start_index}")


class _BatchChecks:
    """What runs before each forward pass of a chunk: the shutdown flag every time; the cancel flag and the
    lease renewal (one transaction) at most every `SHARD_CHECK_SECONDS`, counted from the claim, so a slow
    first model load renews before the first batch. `lease` is the latest renewed lease."""

    def __init__(self, ctx: ChunkContext, plan: ChunkPlan) -> None:
        self.ctx, self.plan = ctx, plan
        self.lease = plan.lease
        self.checked = plan.claimed_at  # the claim read the cancel flag and took a fresh lease then

    def __call__(self) -> None:
        if self.ctx.shutdown.is_set():
            raise _Stop(ChunkOutcome.RELEASED)
        if time.monotonic() - self.checked >= SHARD_CHECK_SECONDS:
            self.lease = _between_batches(self.ctx, self.plan, self.lease)
            self.checked = time.monotonic()


class _Stop(Exception):
    """Internal: leave the batch loop with an outcome (after the batch in flight was written)."""

    def __init__(self, outcome: ChunkOutcome) -> None:
        super().__init__(outcome.value)
        self.outcome = outcome


def _between_batches(ctx: ChunkContext, plan: ChunkPlan, lease: Lease) -> Lease:
    """The cancel check and a lease renewal, in one transaction (`_Stop` when the job is being cancelled)."""
    with transaction(ctx.session_factory) as session:
        if is_cancel_requested(session, plan.job_id):
            raise _Stop(ChunkOutcome.CANCELLED)
        return renew_lease(session, lease, lease_seconds=ctx.settings.lease_seconds)


def _write_rows(ctx: ChunkContext, lease: Lease, records: list[ImageRecord]) -> None:
    """The rows of images already uploaded, in one fenced transaction (a chunk stopping midway keeps them)."""
    with transaction(ctx.session_factory) as session:
        upsert_images(session, lease, records, renew_seconds=ctx.settings.lease_seconds)


def _run_batches(
    ctx: ChunkContext, plan: ChunkPlan, generator: GeneratorLike
) -> tuple[Lease, list[ImageRecord], list[ImageRecord]]:
    """Forward batch k+1 while batch k encodes and uploads in the pool; the chunk's rows in one transaction.

    After each gated batch the loop waits for the previous batch's uploads (two batches in flight at most,
    three with gate overlap, so memory stays bounded; `_gated_batches`). SQL is batched per chunk: the rows of every batch are returned for the
    transaction that completes the chunk, and between batches only the cancel flag and the lease renewal
    cost a transaction, at most every `SHARD_CHECK_SECONDS` (the shutdown flag is read every time). A chunk
    stopped midway (cancel, shutdown) writes the rows of the images it uploaded before it stops: finished
    images stay. Returns the lease, [] (nothing written yet) and the records.
    """
    checks = _BatchChecks(ctx, plan)
    checkpoint_sha = plan.model_version.checkpoint_sha256 or generator.checkpoint_sha256
    inference = inference_fields(generator)  # written into every file's provenance
    in_flight: list[Future[ImageRecord]] = []
    futures: list[Future[ImageRecord]] = []
    records: list[ImageRecord] = []
    try:
        with contextlib.closing(_gated_batches(ctx, plan, generator, checks)) as batches:
            for gated in batches:
                futures = [
                    ctx.pool.submit(_encode_and_upload, ctx, plan, image, checkpoint_sha, inference)
                    for image in gated
                ]
                records += [future.result() for future in in_flight]
                in_flight, futures = futures, []
        records += [future.result() for future in in_flight]
        in_flight = []
    except _Stop:
        # Finished images stay: wait for the batch that was uploading and write every row so far. A batch
        # still in the gate is dropped: a rerun draws it again, identically.
        records += [future.result() for future in in_flight]
        in_flight = []
        if records:
            _write_rows(ctx, checks.lease, records)
        raise
    finally:
        # An attempt that fails ends with its uploads: those not started are cancelled, and those running are
        # waited for, so that no PUT of this attempt lands after the chunk is released, rerun elsewhere (whose
        # bytes may differ in provenance) or its job deleted.
        leftover = [*in_flight, *futures]
        for future in leftover:
            future.cancel()
        wait_futures(leftover)
    return checks.lease, [], records


def _finish(ctx: ChunkContext, plan: ChunkPlan, progress: JobProgress | None) -> None:
    if progress is not None and progress.all_chunks_finished:
        ctx.on_job_finished(plan.job_id)
    if progress is not None:  # the chunk left its tenant's publish window: the tenant's next one goes in
        ctx.on_chunk_finished(plan.tenant_id, plan.queue)


def _fail(ctx: ChunkContext, plan: ChunkPlan, lease: Lease, exc: BaseException) -> ChunkOutcome:
    """A failed attempt: quarantine at the last attempt, else release and rerun after a delay."""
    error = f"{type(exc).__name__}: {exc}"[:2000]
    extra = log_extra(lease)
    if lease.round_attempts >= ctx.settings.max_attempts:
        with transaction(ctx.session_factory) as session:
            progress = quarantine_chunk(session, lease.chunk_id, error=error, attempt=lease.attempt)
        logger.error("chunk quarantined after %d attempts: %s", lease.attempt, error, extra=extra)
        _finish(ctx, plan, progress)
        return ChunkOutcome.QUARANTINED
    with transaction(ctx.session_factory) as session:
        released = release_chunk(session, lease, error=error)
        if released:  # the retry message below is the chunk's message now: the reaper leaves it alone
            mark_enqueued(session, [lease.chunk_id])
    logger.warning("chunk attempt failed, retrying: %s", error, extra=extra, exc_info=exc)
    if released:
        ctx.republish(plan.queue, lease.chunk_id, ctx.settings.retry_delay_seconds * lease.attempt)
    return ChunkOutcome.RETRY


def generate_chunk(ctx: ChunkContext, chunk_id: int) -> ChunkOutcome:
    """Run one chunk end to end; safe to call any number of times for the same id."""
    claimed = _claim(ctx, chunk_id)
    if claimed is None:
        logger.info("chunk not claimable (finished, leased or out of attempts)", extra={"chunk_id": chunk_id})
        return ChunkOutcome.NOT_CLAIMED
    if isinstance(claimed, JobProgress):
        if claimed.all_chunks_finished:
            ctx.on_job_finished(_job_of(ctx, chunk_id))
        return ChunkOutcome.CANCELLED
    plan = claimed
    lease = plan.lease
    extra = log_extra(lease)
    logger.info("chunk claimed [%d, %d)", lease.start_index, lease.stop_index, extra=extra)
    try:
        _check_fault(ctx, plan)
        generator = ctx.generators.get(plan.model_version)
        runner = _run_shard_batches if plan.output_format == SHARD_FORMAT else _run_batches
        lease, earlier, last = runner(ctx, plan, generator)
        # This attempt wrote a row for every index of the chunk (earlier batches, then `last` here), so the
        # records it holds are the chunk's whole outcome.
        rejected = sum(record.status is ImageStatus.REJECTED for record in (*earlier, *last))
        with transaction(ctx.session_factory) as session:  # fenced rows + completion + counters, one commit
            upsert_images(session, lease, last)
            total = lease.stop_index - lease.start_index
            progress = complete_chunk(session, lease, done=total - rejected, rejected=rejected)
        written = len(earlier) + len(last)
    except _Stop as stop:
        return _stop(ctx, plan, lease, stop.outcome)
    except StaleAttemptError as exc:
        logger.warning("stale attempt stopped: %s", exc, extra=extra)
        return ChunkOutcome.STALE
    except Exception as exc:
        return _fail(ctx, plan, lease, exc)
    logger.info("chunk succeeded: %d images", written, extra=extra)
    _finish(ctx, plan, progress)
    return ChunkOutcome.SUCCEEDED


def _stop(ctx: ChunkContext, plan: ChunkPlan, lease: Lease, outcome: ChunkOutcome) -> ChunkOutcome:
    extra = log_extra(lease)
    if outcome is ChunkOutcome.CANCELLED:
        with transaction(ctx.session_factory) as session:
            progress = cancel_chunk_counted(session, lease.chunk_id, attempt=lease.attempt)
        logger.info("chunk cancelled between batches", extra=extra)
        _finish(ctx, plan, progress)
        return outcome
    with transaction(ctx.session_factory) as session:
        # Not a failure: the claim goes back to the chunk's budget (rolling restarts must not quarantine it).
        released = release_chunk(session, lease, error="released at worker shutdown", refund_attempt=True)
        if released:
            mark_enqueued(session, [lease.chunk_id])
    logger.info("chunk released at shutdown", extra=extra)
    if released:
        ctx.republish(plan.queue, lease.chunk_id, None)
    return outcome


def _job_of(ctx: ChunkContext, chunk_id: int) -> str:
    with ctx.session_factory() as session:
        chunk = session.get(Chunk, chunk_id)
        assert chunk is not None
        return chunk.job_id
