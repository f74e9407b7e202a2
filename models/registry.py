"""The model registry: record finished runs as candidates, resolve references, promote behind metric gates.

No torch here (so `catalogan models list` starts fast). The gates (`CATALOGAN_GATE_*` settings) and
`promote_version` live in `db/promotion.py`, so the console's promote button applies them without importing
`models`; they are re-exported here for `catalogan models promote` and training. A promotion below any gate,
or without the gate's metric, is refused unless forced.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from db.engine import transaction
from db.errors import ConflictError
from db.model_versions import (
    create_model_version,
    describe_model_version,
    list_model_versions,
    resolve_model_version,
    set_metrics,
    transition_model_version,
)
from db.promotion import GateCheck as GateCheck
from db.promotion import PromotionGates as PromotionGates
from db.promotion import promote_version as promote_version
from db.status import ModelVersionStatus
from db.tables import ModelVersion

REGISTER_ATTEMPTS = 3


def register_version(
    session_factory: sessionmaker[Session],
    *,
    name: str,
    preset: str,
    checkpoint_uri: str,
    checkpoint_sha256: str,
    model_config: Mapping[str, Any],
    data_fingerprint: str,
    metrics: Mapping[str, Any] | None = None,
    status: ModelVersionStatus = ModelVersionStatus.CANDIDATE,
    version: int | None = None,
) -> ModelVersion:
    """Record a trained generator as a new version of `name` (a candidate unless told otherwise).

    Without an explicit `version` the next free number is taken; a concurrent registration of the same
    name that wins the number makes this one retry with the next.
    """
    for attempt in range(1, REGISTER_ATTEMPTS + 1):
        try:
            return _insert_version(
                session_factory,
                name,
                preset,
                checkpoint_uri,
                checkpoint_sha256,
                model_config,
                data_fingerprint,
                metrics,
                status,
                version,
            )
        except ConflictError:
            if version is not None or attempt == REGISTER_ATTEMPTS:
                raise
    raise AssertionError("unreachable: the last attempt returns or raises")


def _insert_version(
    session_factory: sessionmaker[Session],
    name: str,
    preset: str,
    checkpoint_uri: str,
    checkpoint_sha256: str,
    model_config: Mapping[str, Any],
    data_fingerprint: str,
    metrics: Mapping[str, Any] | None,
    status: ModelVersionStatus,
    version: int | None,
) -> ModelVersion:
    with transaction(session_factory) as session:
        return create_model_version(
            session,
            name=name,
            version=version,
            preset=preset,
            architecture=str(model_config.get("architecture", "")),
            config=dict(model_config),
            categories=list(model_config.get("categories", [])),
            checkpoint_uri=checkpoint_uri,
            checkpoint_sha256=checkpoint_sha256,
            data_fingerprint=data_fingerprint,
            metrics=metrics,
            status=status,
        )


def list_versions(session_factory: sessionmaker[Session], name: str | None = None) -> list[ModelVersion]:
    """Every registered version (of one name, if given)."""
    with transaction(session_factory) as session:
        return list_model_versions(session, name)


def get_version(session_factory: sessionmaker[Session], ref: str) -> ModelVersion:
    """The version `ref` names (`name` = production, `name@version` = exact); `NotFoundError` otherwise."""
    with transaction(session_factory) as session:
        return resolve_model_version(session, ref)


def retire_version(session_factory: sessionmaker[Session], ref: str) -> ModelVersion:
    """Retire a version (generation refuses retired versions)."""
    with transaction(session_factory) as session:
        return transition_model_version(
            session, resolve_model_version(session, ref), ModelVersionStatus.RETIRED
        )


def restore_version(session_factory: sessionmaker[Session], ref: str) -> ModelVersion:
    """Make a retired version a candidate again: the transitions map's only way back from retired, so a
    version retired by mistake can be promoted again (through the gates, as any candidate)."""
    with transaction(session_factory) as session:
        return transition_model_version(
            session, resolve_model_version(session, ref), ModelVersionStatus.CANDIDATE
        )


def record_metrics(
    session_factory: sessionmaker[Session], ref: str, metrics: Mapping[str, Any]
) -> ModelVersion:
    """Merge evaluation metrics into a version's row."""
    with transaction(session_factory) as session:
        return set_metrics(session, resolve_model_version(session, ref), metrics)


def describe(row: ModelVersion) -> dict[str, Any]:
    """A JSON-friendly view of a version for `models show --json` (timestamps as ISO 8601 text)."""
    view = describe_model_version(row)
    for name in ("created_at", "promoted_at"):
        view[name] = view[name].isoformat() if view[name] else None
    return view
