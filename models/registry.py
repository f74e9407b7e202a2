"""The model registry: record finished runs as candidates, resolve references, promote behind metric gates.

No torch here (so `catalogan models list` starts fast). Gates are read from `CATALOGAN_GATE_*` settings:
a promotion below any gate, or without the gate's metric, is refused unless forced.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.orm import Session, sessionmaker

from db.engine import transaction
from db.errors import ConflictError
from db.model_versions import (
    create_model_version,
    list_model_versions,
    resolve_model_version,
    set_metrics,
    transition_model_version,
)
from db.status import ModelVersionStatus
from db.tables import ModelVersion
from models.errors import PromotionRefusedError

REGISTER_ATTEMPTS = 3


class PromotionGates(BaseSettings):
    """Metric gates for `catalogan models promote` (`CATALOGAN_GATE_MIN_CONDITIONAL_ACCURACY`, …)."""

    model_config = SettingsConfigDict(env_prefix="CATALOGAN_GATE_", extra="ignore", frozen=True)

    min_conditional_accuracy: float | None = Field(
        default=0.90, description="evaluator label = requested category"
    )
    min_cas: float | None = Field(default=0.75, description="classifier trained on generated, tested on real")
    max_fid_fm: float | None = Field(
        default=None, description="Fréchet distance in the evaluator's feature space"
    )

    def failures(self, metrics: Mapping[str, Any]) -> list[str]:
        """Why `metrics` do not pass the gates (empty when they do)."""
        reasons: list[str] = []
        for metric, bound, higher_is_better in (
            ("conditional_accuracy", self.min_conditional_accuracy, True),
            ("cas", self.min_cas, True),
            ("fid_fm", self.max_fid_fm, False),
        ):
            if bound is None:
                continue
            value = metrics.get(metric)
            if value is None:
                reasons.append(f"{metric} not measured (gate {'≥' if higher_is_better else '≤'} {bound})")
            elif (float(value) < bound) if higher_is_better else (float(value) > bound):
                reasons.append(
                    f"{metric} = {float(value):.4g} {'<' if higher_is_better else '>'} gate {bound}"
                )
        return reasons


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


def promote_version(
    session_factory: sessionmaker[Session],
    ref: str,
    *,
    gates: PromotionGates | None = None,
    force: bool = False,
) -> ModelVersion:
    """Make `name@version` the production version of its name; refuse below the gates unless `force`."""
    gates = gates or PromotionGates()
    with transaction(session_factory) as session:
        row = resolve_model_version(session, ref)
        reasons = gates.failures(row.metrics or {})
        if reasons and not force:
            raise PromotionRefusedError(
                f"model {row.name}@{row.version} is below the promotion gates: {'; '.join(reasons)} (use --force)"
            )
        return transition_model_version(session, row, ModelVersionStatus.PRODUCTION)


def retire_version(session_factory: sessionmaker[Session], ref: str) -> ModelVersion:
    """Retire a version (generation refuses retired versions)."""
    with transaction(session_factory) as session:
        return transition_model_version(
            session, resolve_model_version(session, ref), ModelVersionStatus.RETIRED
        )


def record_metrics(
    session_factory: sessionmaker[Session], ref: str, metrics: Mapping[str, Any]
) -> ModelVersion:
    """Merge evaluation metrics into a version's row."""
    with transaction(session_factory) as session:
        return set_metrics(session, resolve_model_version(session, ref), metrics)


def describe(row: ModelVersion) -> dict[str, Any]:
    """A JSON-friendly view of a version for `models show --json`."""
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
        "created_at": row.created_at.isoformat() if row.created_at else None,
        "promoted_at": row.promoted_at.isoformat() if row.promoted_at else None,
    }
