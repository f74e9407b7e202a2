"""catalogan's persistence layer: settings, SQL tables and queries, the job/chunk state machine, the object store.

`db` imports nothing else of catalogan's. Migrations live in `db.migrate` (imported on demand: Alembic is
only needed by `catalogan db ...`); the S3 backend imports boto3 only when an `s3://` store is opened.

The names below are re-exported lazily (PEP 562): `from db import Job` imports `db.tables` on first use, so
importing a light module such as `db.errors` (the SDK's error tree) does not pull in SQLAlchemy.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from db.chunks import (
        LEASE_SECONDS,
        MAX_ATTEMPTS,
        Lease,
        assert_lease,
        cancel_chunk,
        claim_chunk,
        complete_chunk,
        find_expired_leases,
        find_stale_pending,
        mark_enqueued,
        mark_quarantined,
        release_chunk,
        renew_lease,
    )
    from db.engine import engine_from_settings, make_engine, make_session_factory, transaction
    from db.errors import (
        AuthenticationError,
        CataloganError,
        ConfigError,
        ConflictError,
        DbError,
        InvalidKeyError,
        InvalidTransitionError,
        NotFoundError,
        ObjectNotFoundError,
        StaleAttemptError,
        StorageError,
        TransientStorageError,
    )
    from db.jobs import (
        JobProgress,
        bump_job_counters,
        get_job,
        is_cancel_requested,
        mark_job_running,
        request_cancel,
        transition_job,
    )
    from db.settings import BrokerSettings, DatabaseSettings, DataSettings, StorageSettings
    from db.status import ChunkStatus, DeliveryStatus, ImageStatus, JobStatus, ModelVersionStatus
    from db.storage import (
        ObjectInfo,
        ObjectStore,
        PresignedUrl,
        open_store,
        validate_key,
        validate_key_segment,
    )
    from db.tables import (
        ApiKey,
        Base,
        Chunk,
        Image,
        Job,
        JobItem,
        ModelVersion,
        Tenant,
        WebhookDelivery,
        utcnow,
    )
    from db.tenants import (
        IssuedApiKey,
        authenticate_api_key,
        create_api_key,
        create_tenant,
        get_tenant,
        get_tenant_by_name,
        revoke_api_key,
    )

_LAZY: dict[str, str] = {
    "LEASE_SECONDS": "db.chunks",
    "MAX_ATTEMPTS": "db.chunks",
    "Lease": "db.chunks",
    "assert_lease": "db.chunks",
    "cancel_chunk": "db.chunks",
    "claim_chunk": "db.chunks",
    "complete_chunk": "db.chunks",
    "find_expired_leases": "db.chunks",
    "find_stale_pending": "db.chunks",
    "mark_enqueued": "db.chunks",
    "mark_quarantined": "db.chunks",
    "release_chunk": "db.chunks",
    "renew_lease": "db.chunks",
    "engine_from_settings": "db.engine",
    "make_engine": "db.engine",
    "make_session_factory": "db.engine",
    "transaction": "db.engine",
    "AuthenticationError": "db.errors",
    "CataloganError": "db.errors",
    "ConfigError": "db.errors",
    "ConflictError": "db.errors",
    "DbError": "db.errors",
    "InvalidKeyError": "db.errors",
    "InvalidTransitionError": "db.errors",
    "NotFoundError": "db.errors",
    "ObjectNotFoundError": "db.errors",
    "StaleAttemptError": "db.errors",
    "StorageError": "db.errors",
    "TransientStorageError": "db.errors",
    "JobProgress": "db.jobs",
    "bump_job_counters": "db.jobs",
    "get_job": "db.jobs",
    "is_cancel_requested": "db.jobs",
    "mark_job_running": "db.jobs",
    "request_cancel": "db.jobs",
    "transition_job": "db.jobs",
    "BrokerSettings": "db.settings",
    "DatabaseSettings": "db.settings",
    "DataSettings": "db.settings",
    "StorageSettings": "db.settings",
    "ChunkStatus": "db.status",
    "DeliveryStatus": "db.status",
    "ImageStatus": "db.status",
    "JobStatus": "db.status",
    "ModelVersionStatus": "db.status",
    "ObjectInfo": "db.storage",
    "ObjectStore": "db.storage",
    "PresignedUrl": "db.storage",
    "open_store": "db.storage",
    "validate_key": "db.storage",
    "validate_key_segment": "db.storage",
    "ApiKey": "db.tables",
    "Base": "db.tables",
    "Chunk": "db.tables",
    "Image": "db.tables",
    "Job": "db.tables",
    "JobItem": "db.tables",
    "ModelVersion": "db.tables",
    "Tenant": "db.tables",
    "WebhookDelivery": "db.tables",
    "utcnow": "db.tables",
    "IssuedApiKey": "db.tenants",
    "authenticate_api_key": "db.tenants",
    "create_api_key": "db.tenants",
    "create_tenant": "db.tenants",
    "get_tenant": "db.tenants",
    "get_tenant_by_name": "db.tenants",
    "revoke_api_key": "db.tenants",
}

__all__ = [
    "LEASE_SECONDS",
    "MAX_ATTEMPTS",
    "ApiKey",
    "AuthenticationError",
    "Base",
    "BrokerSettings",
    "CataloganError",
    "Chunk",
    "ChunkStatus",
    "ConfigError",
    "ConflictError",
    "DataSettings",
    "DatabaseSettings",
    "DbError",
    "DeliveryStatus",
    "Image",
    "ImageStatus",
    "InvalidKeyError",
    "InvalidTransitionError",
    "IssuedApiKey",
    "Job",
    "JobItem",
    "JobProgress",
    "JobStatus",
    "Lease",
    "ModelVersion",
    "ModelVersionStatus",
    "NotFoundError",
    "ObjectInfo",
    "ObjectNotFoundError",
    "ObjectStore",
    "PresignedUrl",
    "StaleAttemptError",
    "StorageError",
    "StorageSettings",
    "Tenant",
    "TransientStorageError",
    "WebhookDelivery",
    "assert_lease",
    "authenticate_api_key",
    "bump_job_counters",
    "cancel_chunk",
    "claim_chunk",
    "complete_chunk",
    "create_api_key",
    "create_tenant",
    "engine_from_settings",
    "find_expired_leases",
    "find_stale_pending",
    "get_job",
    "get_tenant",
    "get_tenant_by_name",
    "is_cancel_requested",
    "make_engine",
    "make_session_factory",
    "mark_enqueued",
    "mark_job_running",
    "mark_quarantined",
    "open_store",
    "release_chunk",
    "renew_lease",
    "request_cancel",
    "revoke_api_key",
    "transaction",
    "transition_job",
    "utcnow",
    "validate_key",
    "validate_key_segment",
]


def __getattr__(name: str) -> Any:
    """Import a re-exported name (or a submodule such as `db.tables`) on first access."""
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    try:
        return importlib.import_module(f"db.{name}")
    except ModuleNotFoundError as exc:
        if exc.name != f"db.{name}":
            raise
        raise AttributeError(f"module 'db' has no attribute {name!r}") from None
