"""Settings of the generation pipeline, shared by workers and the reaper (`CATALOGAN_*` variables).

Torch-free on purpose: `scheduler` (the reaper) reads the same lease and attempt limits as `workers`.
Tests shorten `lease_seconds` and the reaper intervals through the environment of the processes they start.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from db.chunk_sizes import DEFAULT_CHUNK_SIZES, MAX_CHUNK_SIZE, MIN_CHUNK_SIZE
from db.chunks import LEASE_SECONDS, MAX_ATTEMPTS
from db.settings import BaseSettings  # pydantic-settings whose errors name the CATALOGAN_* variable

DEFAULT_QUEUES = "interactive,bulk,backfill"


def _config() -> SettingsConfigDict:
    return SettingsConfigDict(env_prefix="CATALOGAN_", extra="ignore", frozen=True)


class WorkerSettings(BaseSettings):
    """How a `catalogan worker` process runs chunks."""

    model_config = _config()

    lease_seconds: float = Field(default=LEASE_SECONDS, gt=0, le=3600, description="Chunk lease length.")
    max_attempts: int = Field(default=MAX_ATTEMPTS, ge=1, le=100, description="Claims before quarantine.")
    batch_size: int = Field(default=64, ge=1, le=4096, description="Images per forward pass.")
    upload_threads: int = Field(default=8, ge=1, le=128, description="Encode + upload threads per worker.")
    device: str = Field(
        default="auto",
        pattern=r"^(auto|cpu|cuda(:[0-9]{1,3})?)$",
        description="auto, cpu, cuda or cuda:N (`catalogan worker` without --gpus: which GPUs it runs on).",
    )
    inference_backend: str = Field(
        default="auto",
        description="auto (onnxruntime on a CPU where it is installed, else eager), eager, or onnxruntime "
        "(CPU only; the server extra installs it); see models/inference.py.",
    )
    inference_graph: Literal["auto", "plain", "folded"] = Field(
        default="auto",
        description="auto (folded on the CPU, plain on CUDA), plain (the module as trained) or folded (each "
        "nearest x2 + conv3x3 as one equivalent transposed conv: 1.7-1.8x the shipped generator's forward on a "
        "CPU; pixels rounded differently, recorded in the provenance); see models/inference.py.",
    )
    gate_overlap: Literal["auto", "on", "off"] = Field(
        default="auto",
        description="Run batch k's quality gate in its own thread (own CUDA stream) while batch k+1 is "
        "forwarded: auto = on for CUDA, off for the CPU (docs/performance.md, 'Gate overlap').",
    )
    queues: str = Field(default=DEFAULT_QUEUES, description="Comma-separated queues this worker consumes.")
    retry_delay_seconds: float = Field(
        default=2.0, ge=0, le=600, description="Wait before a failed chunk reruns."
    )
    generator_cache_size: int = Field(default=2, ge=1, le=32, description="Model versions kept loaded.")
    # Fault injection (job option `test_fail_chunk_starts`) is honoured only when this is set; tests only.
    test_faults: bool = Field(default=False, description="CATALOGAN_TEST_FAULTS=1 enables fault injection.")

    def overlaps_gate(self, device: str) -> bool:
        """Whether a worker on `device` gates batch k in its own thread while batch k+1 is forwarded.

        `auto` is on for CUDA, where the gate's kernels run on their own stream beside the forward's, and off
        for the CPU, where a worker process already runs one compute thread per core (measured in
        docs/performance.md, "Gate overlap")."""
        if self.gate_overlap == "auto":
            return device.startswith("cuda")
        return self.gate_overlap == "on"

    @property
    def queue_names(self) -> list[str]:
        """The queues as a list."""
        return [name.strip() for name in self.queues.split(",") if name.strip()]


class ChunkSizeSettings(BaseSettings):
    """Images per chunk of a job that gives no `chunk_size`, per queue; read where jobs are planned (the API,
    `catalogan generate`). Planning does not know the workers' devices: a fleet of GPU workers wants larger
    chunks than the CPU-sized defaults (`bench/gpu_bench.py` section 3 measures 256 / 1,024 / 4,096)."""

    model_config = _config()

    chunk_size_interactive: int = Field(
        default=DEFAULT_CHUNK_SIZES["interactive"], ge=MIN_CHUNK_SIZE, le=MAX_CHUNK_SIZE
    )
    chunk_size_bulk: int = Field(default=DEFAULT_CHUNK_SIZES["bulk"], ge=MIN_CHUNK_SIZE, le=MAX_CHUNK_SIZE)
    chunk_size_backfill: int = Field(
        default=DEFAULT_CHUNK_SIZES["backfill"], ge=MIN_CHUNK_SIZE, le=MAX_CHUNK_SIZE
    )

    def for_queue(self, queue: str) -> int:
        """The default chunk size of `queue`."""
        return int(getattr(self, f"chunk_size_{queue}"))


class PublishWindowSettings(BaseSettings):
    """How many chunks one tenant may have published and unfinished per queue (`db.publish_window`); read by
    the API and `catalogan generate` (submits), the workers (refills) and `catalogan beat` (the reaper)."""

    model_config = _config()

    publish_window_chunks: int = Field(
        default=32,
        ge=1,
        le=1_000_000,
        description="Chunks one tenant may have in each queue at once; the rest wait in SQL for their turn.",
    )


class ReaperSettings(BaseSettings):
    """How often `catalogan beat` repairs the pipeline, and when it considers a message lost."""

    model_config = _config()

    reaper_interval_seconds: float = Field(default=5.0, gt=0, le=3600)
    max_attempts: int = Field(default=MAX_ATTEMPTS, ge=1, le=100)
    # A pending chunk published longer ago than this *and* sitting behind an empty (short) broker queue has
    # lost its message: nothing in the queue can still deliver it.
    republish_after_seconds: float = Field(default=60.0, gt=0, le=86_400)
    queue_short_threshold: int = Field(default=0, ge=0, le=100_000, description="'Short' queue depth.")
    finalize_grace_seconds: float = Field(default=30.0, ge=0, le=86_400)
    # A finalize still recorded as writing a job's manifests after this long died mid-write: the reaper has
    # them written again (a live one this slow would only be written over once more, harmlessly).
    finalize_write_timeout_seconds: float = Field(
        default=900.0,
        ge=0,
        le=86_400,
        description="Seconds after which a finalize recorded as writing manifests is presumed dead.",
    )
    reaper_batch_limit: int = Field(
        default=1000, ge=1, le=100_000, description="Rows handled per step and tick."
    )
    retention_interval_seconds: float = Field(
        default=60.0, gt=0, le=86_400, description="Seconds between passes deleting expired jobs."
    )
    retention_jobs_per_pass: int = Field(
        default=100, ge=1, le=100_000, description="Expired jobs looked at per retention pass."
    )
    retention_objects_per_pass: int = Field(
        default=10_000,
        ge=1,
        le=10_000_000,
        description="Objects deleted at most per retention pass (a larger job finishes over several passes).",
    )
