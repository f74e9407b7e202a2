"""The shipped default model: register `models/weights/fashion-cgan/` on first use, so generation works on a
fresh machine without training.

`ensure_default_model` copies the shipped EMA generator into the object store (same bytes → same key, so
re-running is harmless) and inserts its `model_versions` row as production when no row with its sha256
exists. Registrations are serialised (a transaction-scoped advisory lock on PostgreSQL; SQLite's
BEGIN IMMEDIATE already serialises writers), so whoever comes second finds the first one's row. Should an
insert still collide on `name@version` (a concurrent `catalogan train` of the same name), it is retried.
No torch is imported.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.orm import Session, sessionmaker

from db.engine import transaction
from db.errors import ConflictError
from db.model_versions import create_model_version, find_production
from db.status import ModelVersionStatus
from db.storage.base import ObjectStore
from db.tables import ModelVersion
from models.errors import CheckpointError

DEFAULT_MODEL_NAME = "fashion-cgan"
SHIPPED_DIR = Path(__file__).resolve().parent / "weights" / DEFAULT_MODEL_NAME
SHIPPED_CHECKPOINT = SHIPPED_DIR / "generator.pt"
SHIPPED_SHA256 = SHIPPED_DIR / "generator.sha256"
SHIPPED_METADATA = SHIPPED_DIR / "metadata.json"
STORE_KEY = f"models/{DEFAULT_MODEL_NAME}/shipped/generator.pt"
INSERT_ATTEMPTS = 3
# PostgreSQL advisory-lock key serialising registrations of the shipped model (any fixed 63-bit number).
ADVISORY_LOCK_KEY = int.from_bytes(hashlib.sha256(b"catalogan:default-model").digest()[:8], "big") >> 1


def shipped_checkpoint_bytes() -> tuple[bytes, str]:
    """The shipped checkpoint and its sha256, verified against `generator.sha256`; `CheckpointError` if not."""
    try:
        data = SHIPPED_CHECKPOINT.read_bytes()
        expected = SHIPPED_SHA256.read_text().split()[0]
    except OSError as exc:
        raise CheckpointError(f"{SHIPPED_DIR}: the shipped default model is missing ({exc})") from exc
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:
        raise CheckpointError(
            f"{SHIPPED_CHECKPOINT}: sha256 {actual} does not match generator.sha256 ({expected})"
        )
    return data, actual


def shipped_metadata() -> dict[str, Any]:
    """Preset, model config, data fingerprint and metrics of the shipped model (`metadata.json`)."""
    return dict(json.loads(SHIPPED_METADATA.read_text()))


def _find_shipped(session: Session, sha256: str) -> ModelVersion | None:
    return session.scalars(
        select(ModelVersion)
        .where(ModelVersion.name == DEFAULT_MODEL_NAME, ModelVersion.checkpoint_sha256 == sha256)
        .order_by(ModelVersion.version)
        .limit(1)
    ).first()


def _lock_registration(session: Session) -> None:
    """Hold the registration lock until the transaction ends (PostgreSQL; a no-op elsewhere)."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": ADVISORY_LOCK_KEY})


def ensure_default_model(session_factory: sessionmaker[Session], store: ObjectStore) -> ModelVersion:
    """Register the shipped `fashion-cgan` generator (object store + registry row), once; return its row.

    It becomes the production version unless another version of the name is already in production.
    """
    data, sha256 = shipped_checkpoint_bytes()
    with transaction(session_factory) as session:
        found = _find_shipped(session, sha256)
    if found is not None:
        if not store.exists(STORE_KEY):
            store.put(STORE_KEY, data)
        return found
    store.put(STORE_KEY, data)  # before the row, so a row never points at a missing object
    metadata = shipped_metadata()
    for _ in range(INSERT_ATTEMPTS):
        try:
            with transaction(session_factory) as session:
                _lock_registration(session)
                found = _find_shipped(session, sha256)
                if found is not None:
                    return found
                in_production = find_production(session, DEFAULT_MODEL_NAME) is not None
                return create_model_version(
                    session,
                    name=DEFAULT_MODEL_NAME,
                    preset=str(metadata.get("preset", DEFAULT_MODEL_NAME)),
                    architecture=str(metadata.get("model_config", {}).get("architecture", "")),
                    config=metadata.get("model_config", {}),
                    categories=metadata.get("model_config", {}).get("categories", []),
                    checkpoint_uri=store.uri(STORE_KEY),
                    checkpoint_sha256=sha256,
                    data_fingerprint=str(metadata.get("data_fingerprint", "")),
                    metrics=metadata.get("metrics", {}),
                    status=ModelVersionStatus.CANDIDATE if in_production else ModelVersionStatus.PRODUCTION,
                )
        except ConflictError:
            continue  # another process inserted this name@version first: look again
    with transaction(session_factory) as session:
        found = _find_shipped(session, sha256)
    if found is None:
        raise ConflictError(
            f"could not register the shipped {DEFAULT_MODEL_NAME} model after {INSERT_ATTEMPTS} attempts"
        )
    return found
