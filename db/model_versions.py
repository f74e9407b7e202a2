"""Model version rows: create, get, list, resolve a reference, and change status through the transitions map.

A reference is `name` (its production version), `name@version` (exactly that one) or nothing (the newest
production version of any name); `resolve_model_version` is the one resolver, for jobs, previews, estimates
and the registry commands alike. At most one version of a name is in production: promoting one retires the
one before it, in the same transaction.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import func, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from db.errors import ConflictError, NotFoundError
from db.job_specs import MAX_MODEL_VERSION, split_model_ref
from db.status import MODEL_VERSION_TRANSITIONS, ModelVersionStatus, check_transition
from db.tables import ModelVersion, utcnow

# What a model name may be: `name@version` addresses a version, and the name is a folder of object keys
# (`models/<name>/...`), so no '@', '/', space or leading dot.
MODEL_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def check_model_name(name: str) -> str:
    """`name` when it is a valid model name; `ValueError` naming the rule otherwise."""
    if not MODEL_NAME_PATTERN.fullmatch(name):
        raise ValueError(
            f"{name!r}: a model name is 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit "
            "(no '@': name@version addresses a version)"
        )
    return name


def next_version(session: Session, name: str) -> int:
    """1 + the highest version registered under `name` (1 for a new name).

    On PostgreSQL a transaction-scoped advisory lock on the name is taken first, so concurrent registrations
    of one name get consecutive numbers instead of colliding (SQLite's BEGIN IMMEDIATE serialises writers).
    """
    if session.get_bind().dialect.name == "postgresql":
        session.execute(
            text("SELECT pg_advisory_xact_lock(hashtext(:name))"), {"name": f"model_versions:{name}"}
        )
    highest = session.scalar(select(func.max(ModelVersion.version)).where(ModelVersion.name == name))
    return int(highest or 0) + 1


def create_model_version(
    session: Session,
    *,
    name: str,
    preset: str,
    checkpoint_uri: str,
    checkpoint_sha256: str = "",
    architecture: str = "",
    config: Mapping[str, Any] | None = None,
    categories: Sequence[str] = (),
    data_fingerprint: str = "",
    metrics: Mapping[str, Any] | None = None,
    version: int | None = None,
    status: ModelVersionStatus = ModelVersionStatus.CANDIDATE,
) -> ModelVersion:
    """Insert a model version (next free version number unless given); `ConflictError` on a duplicate."""
    row = ModelVersion(
        name=name,
        version=version if version is not None else next_version(session, name),
        preset=preset,
        architecture=architecture,
        config=dict(config or {}),
        categories=list(categories),
        checkpoint_uri=checkpoint_uri,
        checkpoint_sha256=checkpoint_sha256,
        data_fingerprint=data_fingerprint,
        metrics=dict(metrics or {}),
        status=status,
        promoted_at=utcnow() if status is ModelVersionStatus.PRODUCTION else None,
    )
    try:
        with session.begin_nested():
            session.add(row)
            session.flush()
    except IntegrityError as exc:
        raise ConflictError(f"model {name}@{row.version} already exists") from exc
    return row


def get_model_version(session: Session, name: str, version: int) -> ModelVersion:
    """The row `name@version`; `NotFoundError` when missing (a version beyond 9 digits never exists: it is
    not sent to the database, whose integer column would refuse it)."""
    if not 0 <= version <= MAX_MODEL_VERSION:
        raise NotFoundError(f"model {name}@{version} is not registered (a version is 1 to 9 digits)")
    found = session.scalars(
        select(ModelVersion).where(ModelVersion.name == name, ModelVersion.version == version)
    ).one_or_none()
    if found is None:
        raise NotFoundError(f"model {name}@{version} is not registered")
    return found


def list_model_versions(session: Session, name: str | None = None) -> list[ModelVersion]:
    """Every version (of one name, if given), by name then version."""
    query = select(ModelVersion).order_by(ModelVersion.name, ModelVersion.version)
    if name is not None:
        query = query.where(ModelVersion.name == name)
    return list(session.scalars(query))


def find_production(session: Session, name: str) -> ModelVersion | None:
    """The production version of `name`, or None."""
    return session.scalars(
        select(ModelVersion)
        .where(ModelVersion.name == name, ModelVersion.status == ModelVersionStatus.PRODUCTION)
        .order_by(ModelVersion.version.desc())
        .limit(1)
    ).first()


def resolve_model_version(session: Session, ref: str | None) -> ModelVersion:
    """`name@version` → that row; `name` → its production version; None → the newest production version of
    any name. Raises `NotFoundError` when there is none (and `PlanningError` for a malformed reference)."""
    if not ref:
        found = session.scalars(
            select(ModelVersion)
            .where(ModelVersion.status == ModelVersionStatus.PRODUCTION)
            .order_by(ModelVersion.version.desc(), ModelVersion.id.desc())
            .limit(1)
        ).first()
        if found is None:
            raise NotFoundError("no production model is registered (promote one, or ask for name@<version>)")
        return found
    name, version = split_model_ref(ref)
    if version is not None:
        return get_model_version(session, name, version)
    found = find_production(session, name)
    if found is None:
        raise NotFoundError(
            f"model {name!r} has no production version (promote one, or ask for {name}@<version>)"
        )
    return found


def transition_model_version(session: Session, row: ModelVersion, target: ModelVersionStatus) -> ModelVersion:
    """Move `row` to `target` if the transitions map allows it; promoting retires the previous production.

    The name's rows are locked first (FOR UPDATE; SQLite serialises writers anyway), so two concurrent
    promotions cannot leave two production versions.
    """
    session.execute(select(ModelVersion.id).where(ModelVersion.name == row.name).with_for_update())
    session.refresh(row)
    check_transition(f"model {row.name}@{row.version}", row.status, target, MODEL_VERSION_TRANSITIONS)
    if target is ModelVersionStatus.PRODUCTION:
        previous = find_production(session, row.name)
        if previous is not None and previous.id != row.id:
            previous.status = ModelVersionStatus.RETIRED
        row.promoted_at = utcnow()
    row.status = target
    session.flush()
    return row


def set_metrics(session: Session, row: ModelVersion, metrics: Mapping[str, Any]) -> ModelVersion:
    """Merge `metrics` into the row's metrics."""
    row.metrics = {**(row.metrics or {}), **dict(metrics)}
    session.flush()
    return row


def describe_model_version(row: ModelVersion) -> dict[str, Any]:
    """Everything an operator reads about a version (`catalogan models show`, the console's models page):
    name, version, ref, status, preset, architecture, categories, checkpoint, data fingerprint, metrics,
    config and the timestamps (as datetimes)."""
    return {
        "name": row.name,
        "version": row.version,
        "ref": f"{row.name}@{row.version}",
        "status": row.status.value,
        "preset": row.preset,
        "architecture": row.architecture,
        "categories": list(row.categories or []),
        "checkpoint_uri": row.checkpoint_uri,
        "checkpoint_sha256": row.checkpoint_sha256,
        "data_fingerprint": row.data_fingerprint,
        "metrics": dict(row.metrics or {}),
        "config": dict(row.config or {}),
        "created_at": row.created_at,
        "promoted_at": row.promoted_at,
    }
