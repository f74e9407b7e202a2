"""The per-process dependencies of a worker, built once from settings on the first task."""

from __future__ import annotations

import os
import socket
import threading
from concurrent.futures import ThreadPoolExecutor

from db.engine import engine_from_settings, make_session_factory
from db.messaging import CeleryPublisher
from db.pipeline_settings import WorkerSettings
from db.settings import DatabaseSettings, DataSettings, StorageSettings
from db.storage import open_store
from workers.chunk_generation import ChunkContext
from workers.errors import WorkerConfigError
from workers.generator_cache import GeneratorCache

_lock = threading.Lock()
_context: ChunkContext | None = None
# Set by the worker's shutdown signal before or after the context exists.
SHUTDOWN = threading.Event()


def resolve_device(requested: str) -> str:
    """`auto` → `cuda` when a GPU is visible, else `cpu`; anything else is checked and returned."""
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cpu" or requested.startswith("cuda"):
        if requested.startswith("cuda") and not torch.cuda.is_available():
            raise WorkerConfigError(f"device {requested!r}: no CUDA device is visible")
        return requested
    raise WorkerConfigError(f"device {requested!r}: must be auto, cpu, cuda or cuda:N")


def build_context(publisher: CeleryPublisher, settings: WorkerSettings | None = None) -> ChunkContext:
    """Build the worker's dependencies from `CATALOGAN_*` settings (engine, store, cache, pool)."""
    from db.publish_window import publish_window_chunks, refill
    from workers.finalize import finalize_job

    settings = settings or WorkerSettings()
    data = DataSettings()
    session_factory = make_session_factory(engine_from_settings(DatabaseSettings(), data))
    store = open_store(StorageSettings().url(data))
    device = resolve_device(settings.device)
    if device.startswith("cuda") and "batch_size" not in settings.model_fields_set:
        from models.inference import CUDA_WORKER_BATCH_SIZE

        settings = settings.model_copy(update={"batch_size": CUDA_WORKER_BATCH_SIZE})  # device-aware default
    from models.inference import default_spec, resolve_backend, resolve_graph

    backend = resolve_backend(settings.inference_backend, device)  # `auto`: onnxruntime on a CPU that has it
    graph = resolve_graph(settings.inference_graph, device)  # `auto`: folded on the CPU
    try:  # refuse an impossible backend before any chunk is claimed
        default_spec(device, backend=backend)
    except ValueError as exc:
        raise WorkerConfigError(f"CATALOGAN_INFERENCE_BACKEND: {exc}") from exc
    generators = GeneratorCache(
        store, device=device, max_entries=settings.generator_cache_size, backend=backend, graph=graph
    )
    pool = ThreadPoolExecutor(max_workers=settings.upload_threads, thread_name_prefix="upload")
    gate_pool = (
        ThreadPoolExecutor(max_workers=1, thread_name_prefix="gate")
        if settings.overlaps_gate(device)
        else None
    )

    def on_job_finished(job_id: str) -> None:
        finalize_job(session_factory, store, job_id)

    window = publish_window_chunks()

    def on_chunk_finished(tenant_id: str, queue: str) -> None:
        refill(session_factory, publisher, tenant_id, queue, window=window)

    def republish(queue: str, chunk_id: int, countdown: float | None) -> None:
        publisher.publish_chunk(queue, chunk_id, countdown=countdown)

    return ChunkContext(
        session_factory=session_factory,
        store=store,
        generators=generators,
        settings=settings,
        worker_name=f"{socket.gethostname()}:{os.getpid()}",
        pool=pool,
        gate_pool=gate_pool,
        device=device,
        on_job_finished=on_job_finished,
        on_chunk_finished=on_chunk_finished,
        republish=republish,
        shutdown=SHUTDOWN,
    )


def get_context(publisher: CeleryPublisher) -> ChunkContext:
    """The process's context, built on first use."""
    global _context
    with _lock:
        if _context is None:
            _context = build_context(publisher)
        return _context
