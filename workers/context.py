"""The per-process dependencies of a worker, built once from settings on the first task.

Their settings are read and checked by `read_worker_config` when the process starts (`catalogan worker`), so
a worker that could never run a chunk exits at start instead of answering pings and failing every task.
"""

from __future__ import annotations

import os
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

from db.engine import engine_from_settings, make_session_factory
from db.errors import ConfigError
from db.pipeline_settings import WorkerSettings
from db.settings import BrokerSettings, DatabaseSettings, DataSettings, StorageSettings
from db.storage import open_store
from workers.errors import WorkerConfigError

if TYPE_CHECKING:  # torch-free at import: the supervisor of `catalogan worker` checks settings with it
    from db.messaging import CeleryPublisher
    from workers.chunk_generation import ChunkContext

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
        index = requested.partition(":")[2]
        if (
            index.isdecimal() and int(index) >= torch.cuda.device_count()
        ):  # torch would fail only at the first tensor
            raise WorkerConfigError(
                f"device {requested!r}: GPU {index} is not visible ({torch.cuda.device_count()} visible)"
            )
        return requested
    raise WorkerConfigError(f"device {requested!r}: must be auto, cpu, cuda or cuda:N")


@dataclass(frozen=True)
class ServiceSettings:
    """The settings of what a worker talks to: its data folder, database, object store and broker, and the
    publish window its refills use."""

    data: DataSettings
    database: DatabaseSettings
    storage: StorageSettings
    broker: BrokerSettings
    publish_window: int


def read_service_settings() -> ServiceSettings:
    """Read and check the settings of the services a worker uses, opening nothing and importing no torch.

    `catalogan worker`'s supervisor calls it before it starts its children: a bad one is then one line naming
    the variable, not one per child. Raises `ConfigError` (a `SettingsError`) naming the variable."""
    from db.pipeline_settings import PublishWindowSettings

    return ServiceSettings(
        DataSettings(),
        DatabaseSettings(),
        StorageSettings(),
        BrokerSettings(),
        PublishWindowSettings().publish_window_chunks,
    )


@dataclass(frozen=True)
class WorkerConfig:
    """Everything a worker process reads from `CATALOGAN_*` variables, checked, with `auto` choices resolved."""

    settings: WorkerSettings
    services: ServiceSettings
    device: str
    backend: str
    graph: str


def read_worker_config(settings: WorkerSettings | None = None) -> WorkerConfig:
    """Read and check every setting a worker runs chunks with, opening nothing (no connection, no model).

    Called at the start of each worker process (`catalogan worker`) as well as by `build_context`: the context
    is built on the first task, so a setting refused only there failed every task (each dropped: acks_late)
    while the worker said ready and answered pings. Raises `ConfigError` naming the variable (exit 6)."""
    from models.inference import default_spec, resolve_backend, resolve_graph

    settings = settings or WorkerSettings()
    services = read_service_settings()
    try:
        device = resolve_device(settings.device)
    except WorkerConfigError as exc:
        raise ConfigError(f"CATALOGAN_DEVICE: {exc} (use auto or cpu)") from None
    if device.startswith("cuda") and "batch_size" not in settings.model_fields_set:
        from models.inference import CUDA_WORKER_BATCH_SIZE

        settings = settings.model_copy(update={"batch_size": CUDA_WORKER_BATCH_SIZE})  # device-aware default
    backend = resolve_backend(settings.inference_backend, device)  # `auto`: onnxruntime on a CPU that has it
    graph = resolve_graph(settings.inference_graph, device)  # `auto`: folded on the CPU
    try:  # refuse an impossible backend before any chunk is claimed
        default_spec(device, backend=backend)
    except ValueError as exc:
        raise ConfigError(f"CATALOGAN_INFERENCE_BACKEND: {exc}") from None
    return WorkerConfig(settings, services, device, backend, graph)


def build_context(publisher: CeleryPublisher, settings: WorkerSettings | None = None) -> ChunkContext:
    """Build the worker's dependencies from `CATALOGAN_*` settings (engine, store, cache, pool)."""
    from db.publish_window import refill
    from workers.chunk_generation import ChunkContext
    from workers.finalize import finalize_job
    from workers.generator_cache import GeneratorCache

    config = read_worker_config(settings)
    settings, device, services = config.settings, config.device, config.services
    session_factory = make_session_factory(engine_from_settings(services.database, services.data))
    store = open_store(services.storage.url(services.data))
    generators = GeneratorCache(
        store,
        device=device,
        max_entries=settings.generator_cache_size,
        backend=config.backend,
        graph=config.graph,
    )
    pool = ThreadPoolExecutor(max_workers=settings.upload_threads, thread_name_prefix="upload")
    gate_pool = (
        ThreadPoolExecutor(max_workers=1, thread_name_prefix="gate")
        if settings.overlaps_gate(device)
        else None
    )

    def on_job_finished(job_id: str) -> None:
        finalize_job(session_factory, store, job_id)

    window = services.publish_window

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
