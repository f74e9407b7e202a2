"""The public surface of `db`: `__all__` is exactly what is exported, and importing it stays light."""

from __future__ import annotations

import subprocess
import sys

import db
import db.storage

EXPECTED_DB = {
    # errors
    "CataloganError", "DbError", "ConfigError", "NotFoundError", "InvalidTransitionError", "StaleAttemptError",
    "ConflictError", "AuthenticationError", "StorageError", "InvalidKeyError", "ObjectNotFoundError",
    "TransientStorageError",
    # settings and engines
    "DataSettings", "DatabaseSettings", "StorageSettings", "BrokerSettings",
    "make_engine", "engine_from_settings", "make_session_factory", "transaction",
    # tables and statuses
    "Base", "Tenant", "ApiKey", "ModelVersion", "Job", "JobItem", "Chunk", "Image", "WebhookDelivery", "utcnow",
    "JobStatus", "ChunkStatus", "ImageStatus", "ModelVersionStatus", "DeliveryStatus",
    # jobs
    "JobProgress", "get_job", "transition_job", "mark_job_running", "request_cancel", "is_cancel_requested",
    "bump_job_counters",
    # chunks
    "Lease", "LEASE_SECONDS", "MAX_ATTEMPTS", "claim_chunk", "assert_lease", "renew_lease", "complete_chunk",
    "release_chunk", "cancel_chunk", "mark_quarantined", "find_expired_leases", "find_stale_pending",
    "mark_enqueued",
    # tenants
    "IssuedApiKey", "create_tenant", "get_tenant", "get_tenant_by_name", "create_api_key", "revoke_api_key",
    "authenticate_api_key",
    # object store
    "ObjectStore", "ObjectInfo", "PresignedUrl", "open_store", "validate_key", "validate_key_segment",
}  # fmt: skip


def test_db_all_lists_exactly_the_public_names() -> None:
    """Given `import db`, __all__ is the documented surface and every name in it resolves."""
    assert set(db.__all__) == EXPECTED_DB
    assert all(hasattr(db, name) for name in db.__all__)


def test_storage_all_resolves() -> None:
    """Given `import db.storage`, every name in its __all__ resolves."""
    assert {"open_store", "ObjectStore", "LocalStore", "MemoryStore", "validate_key"} <= set(
        db.storage.__all__
    )
    assert all(hasattr(db.storage, name) for name in db.storage.__all__)


def test_importing_db_loads_neither_torch_nor_boto3_nor_alembic() -> None:
    """Given a fresh interpreter, `import db` does not pull torch, boto3 (S3 only) or alembic (migrations only)."""
    code = "import sys, db; print(sorted(m for m in ('torch', 'boto3', 'alembic') if m in sys.modules))"
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout

    assert output.strip() == "[]"
