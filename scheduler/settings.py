"""Typed settings of the scheduler, read from `CATALOGAN_*` environment variables once per process.

Persistence settings (database, object store, broker) live in `db.settings`; this module holds what only
the API, the webhook dispatcher and the SDK/CLI read. Each class refuses unsafe combinations at load time
instead of discovering them in production.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from db.errors import ConfigError
from db.job_specs import (
    API_DEFAULT_MAX_CHUNKS_PER_JOB,
    API_DEFAULT_MAX_IMAGES_PER_JOB,
    API_DEFAULT_MAX_RETENTION_DAYS,
    API_DEFAULT_RETENTION_DAYS,
    API_MAX_IMAGES_PER_ITEM,
    MAX_CHUNKS_PER_JOB,
    MAX_IMAGES_PER_JOB,
    MAX_ITEMS_PER_JOB,
    MAX_RETENTION_DAYS,
    MIN_RETENTION_DAYS,
)
from db.settings import BaseSettings  # pydantic-settings whose errors name the CATALOGAN_* variable

MIB = 1024 * 1024
DEFAULT_MAX_REQUEST_BYTES = 10 * MIB
# Cell text a manifest may decode to (Parquet string columns, CSV/JSONL text): far above 100,000 short rows.
DEFAULT_MANIFEST_MAX_DECODED_BYTES = 64 * MIB
# What a Parquet manifest's footer may declare (scheduler.api.parquet_manifests). A pandas export of 1,000
# columns has a 580 KiB footer; one of 50 columns in 100 row groups, 800 KiB.
DEFAULT_MANIFEST_PARQUET_MAX_FOOTER_BYTES = MIB
DEFAULT_MANIFEST_PARQUET_MAX_COLUMNS = 1_000
DEFAULT_MANIFEST_PARQUET_MAX_ROW_GROUPS = 1_000
MAX_REQUEST_BYTES_CEILING = 1024 * MIB


def _config() -> SettingsConfigDict:
    return SettingsConfigDict(env_prefix="CATALOGAN_", extra="ignore", frozen=True)


# `catalogan serve`: connections and requests one uvicorn process serves at once (more: 503 at once). Well under
# the usual 1,024 open files per process, which also hold the database, Redis and S3 connections and temp files.
DEFAULT_LIMIT_CONCURRENCY = 512


class ApiSettings(BaseSettings):
    """The HTTP API (`catalogan serve`): bind address, request limits, job bounds, previews."""

    model_config = _config()

    environment: Literal["development", "production"] = Field(
        default="development", description="`production` turns unsafe settings into start-up errors."
    )
    api_host: str = Field(default="127.0.0.1", description="Address `catalogan serve` binds to.")
    api_port: int = Field(default=8000, ge=1, le=65535)
    api_workers: int = Field(default=1, ge=1, le=64, description="uvicorn worker processes.")
    api_limit_concurrency: int = Field(
        default=DEFAULT_LIMIT_CONCURRENCY,
        ge=1,
        le=100_000,
        description="Connections (idle keep-alive ones included) and requests at once per uvicorn process; "
        "beyond it uvicorn answers 503 at once instead of queueing work it cannot start.",
    )
    api_timeout_keep_alive_seconds: int = Field(
        default=5, ge=1, le=300, description="An idle keep-alive connection is closed after this long."
    )
    api_timeout_graceful_shutdown_seconds: int = Field(
        default=30,
        ge=1,
        le=3600,
        description="On SIGTERM, requests still running after this long are cancelled (a slow download's "
        "client cannot hold a stopping process forever).",
    )
    max_request_bytes: int = Field(default=DEFAULT_MAX_REQUEST_BYTES, ge=1024, le=MAX_REQUEST_BYTES_CEILING)
    # The operator tightens the bounds of db.job_specs (declared there once), never widens them.
    max_items_per_job: int = Field(default=MAX_ITEMS_PER_JOB, ge=1, le=MAX_ITEMS_PER_JOB)
    max_images_per_item: int = Field(default=API_MAX_IMAGES_PER_ITEM, ge=1, le=API_MAX_IMAGES_PER_ITEM)
    max_images_per_job: int = Field(default=API_DEFAULT_MAX_IMAGES_PER_JOB, ge=1, le=MAX_IMAGES_PER_JOB)
    job_retention_days: int = Field(
        default=API_DEFAULT_RETENTION_DAYS,
        ge=MIN_RETENTION_DAYS,
        le=MAX_RETENTION_DAYS,
        description="Days a finished job is kept (from its finish) when its request names no retention_days.",
    )
    max_job_retention_days: int = Field(
        default=API_DEFAULT_MAX_RETENTION_DAYS,
        ge=MIN_RETENTION_DAYS,
        le=MAX_RETENTION_DAYS,
        description="The most retention_days a request may ask for (more: 422).",
    )
    max_chunks_per_job: int = Field(
        default=API_DEFAULT_MAX_CHUNKS_PER_JOB,
        ge=1,
        le=MAX_CHUNKS_PER_JOB,
        description="Chunks (broker messages) one job may make; more is a 422 asking for a larger chunk_size.",
    )
    page_size_max: int = Field(default=500, ge=1, le=10_000)
    manifest_max_bytes: int = Field(
        default=64 * MIB, ge=1024, description="Largest object a `manifest_uri` may name (HEAD before GET)."
    )
    manifest_max_decoded_bytes: int = Field(
        default=DEFAULT_MANIFEST_MAX_DECODED_BYTES,
        ge=1024,
        description="Bytes a manifest may decode to: cell text, and a Parquet file's declared page sizes.",
    )
    manifest_parquet_max_footer_bytes: int = Field(
        default=DEFAULT_MANIFEST_PARQUET_MAX_FOOTER_BYTES,
        ge=1024,
        le=64 * MIB,
        description="Largest Parquet manifest footer (its length is read before it is parsed).",
    )
    manifest_parquet_max_columns: int = Field(
        default=DEFAULT_MANIFEST_PARQUET_MAX_COLUMNS,
        ge=4,
        le=100_000,
        description="Columns a Parquet manifest may declare.",
    )
    manifest_parquet_max_row_groups: int = Field(
        default=DEFAULT_MANIFEST_PARQUET_MAX_ROW_GROUPS,
        ge=1,
        le=100_000,
        description="Row groups a Parquet manifest may declare.",
    )
    manifest_uri_allowed_prefixes: dict[str, list[str]] = Field(
        default_factory=dict,
        description="Per tenant id, `s3://bucket/prefix/` locations its `manifest_uri` may read besides "
        "`<store>/<tenant>/uploads/`.",
    )
    submit_queue_max_per_tenant: int = Field(
        default=64,
        ge=1,
        le=10_000,
        description="Submits of one tenant queued or running per API process (more: 429).",
    )
    submit_wait_seconds: float = Field(
        default=60.0,
        gt=0,
        le=600,
        description="Longest a queued submit waits for its tenant's turn (then 429).",
    )
    preview_timeout_seconds: float = Field(default=30.0, gt=0, le=300)
    preview_max_concurrent_per_tenant: int = Field(
        default=2, ge=1, le=1000, description="Previews one tenant may have waiting at once (more: 429)."
    )
    preview_threads: int = Field(
        default=4,
        ge=1,
        le=64,
        description="Threads of the previews' own pool (broker send, result polls); never the shared pool.",
    )
    metrics_token: str = Field(
        default="",
        repr=False,
        description="When set, /metrics requires `Authorization: Bearer <this token>` (401 otherwise).",
    )
    metrics_cache_seconds: float = Field(
        default=15.0, ge=0, le=3600, description="How long /metrics reuses one SQL aggregate."
    )
    rate_limit_window_seconds: int = Field(default=60, ge=1, le=3600)
    auth_threads: int = Field(
        default=4,
        ge=1,
        le=64,
        description="Threads of the API-key and console-session checks' own pool; never the shared pool.",
    )
    auth_failures_per_window: int = Field(
        default=60,
        ge=1,
        le=1_000_000,
        description="Failed API-key or console-session checks one client address may make per rate-limit "
        "window; beyond, 429 before any lookup.",
    )
    default_images_per_second: float = Field(
        default=50.0, gt=0, description="Throughput assumed by estimates until workers have measured one."
    )
    cors_origins: list[str] = Field(
        default_factory=list, description="Origins allowed to call the API from a browser."
    )

    @model_validator(mode="after")
    def _refuse_unsafe(self) -> ApiSettings:
        if self.job_retention_days > self.max_job_retention_days:
            raise ConfigError(
                f"CATALOGAN_JOB_RETENTION_DAYS={self.job_retention_days} is more than "
                f"CATALOGAN_MAX_JOB_RETENTION_DAYS={self.max_job_retention_days}"
            )
        if self.environment == "production" and "*" in self.cors_origins:
            raise ConfigError("CATALOGAN_CORS_ORIGINS='*' is refused in production: list the origins")
        for tenant_id, prefixes in self.manifest_uri_allowed_prefixes.items():
            for prefix in prefixes:
                if not prefix.startswith("s3://") or len(prefix.rstrip("/")) <= len("s3://"):
                    raise ConfigError(
                        f"CATALOGAN_MANIFEST_URI_ALLOWED_PREFIXES[{tenant_id!r}]: {prefix!r} is not s3://bucket/..."
                    )
        return self


class WebhookSettings(BaseSettings):
    """The webhook dispatcher: delivery timeout, retries with exponential backoff, SSRF guard."""

    model_config = _config()

    environment: Literal["development", "production"] = "development"
    webhook_allow_private_targets: bool = Field(
        default=False,
        description="Deliver to loopback, private and link-local addresses (tests, single-host setups).",
    )
    webhook_timeout_seconds: float = Field(
        default=10.0,
        gt=0,
        le=60,
        description="Total deadline of one delivery attempt, DNS to the last byte read.",
    )
    webhook_max_attempts: int = Field(default=8, ge=1, le=30)
    webhook_backoff_base_seconds: float = Field(default=5.0, gt=0)
    webhook_backoff_max_seconds: float = Field(default=3600.0, gt=0)
    webhook_progress_interval_seconds: float = Field(
        default=30.0, gt=0, description="At most one job.progress event per job per interval."
    )
    webhook_batch_size: int = Field(default=100, ge=1, le=10_000)
    webhook_concurrency: int = Field(default=16, ge=1, le=256, description="Deliveries in flight at once.")
    webhook_concurrency_per_tenant: int = Field(
        default=2, ge=1, le=100, description="Deliveries of one tenant claimed per tick (and so in flight)."
    )
    webhook_max_response_bytes: int = Field(
        default=64 * 1024, ge=0, description="Bytes of a receiver's answer read at most (the status decides)."
    )
    webhook_resolve_timeout_seconds: float = Field(
        default=5.0,
        gt=0,
        le=30,
        description="Longest a submit waits for its webhook host's DNS answer (then a 422 naming webhook_url).",
    )

    @model_validator(mode="after")
    def _refuse_unsafe(self) -> WebhookSettings:
        if self.environment == "production" and self.webhook_allow_private_targets:
            raise ConfigError(
                "CATALOGAN_WEBHOOK_ALLOW_PRIVATE_TARGETS=true is refused in production: "
                "it lets tenants make the dispatcher call internal services"
            )
        return self


class ClientSettings(BaseSettings):
    """Where the CLI's SDK-based commands find the API (`CATALOGAN_API_URL`, `CATALOGAN_API_KEY`)."""

    model_config = _config()

    api_url: str = Field(default="http://127.0.0.1:8000")
    api_key: str = Field(default="", repr=False)

    def require_key(self) -> str:
        """The API key, or a `ConfigError` that says how to set one."""
        if not self.api_key:
            raise ConfigError("no API key: set CATALOGAN_API_KEY (create one with `catalogan keys create`)")
        return self.api_key
