"""Resolving a model reference (`name`, `name@version` or nothing) to a registered model version row."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.errors import NotFoundError
from db.planning import split_model_ref
from db.status import ModelVersionStatus
from db.tables import ModelVersion
from scheduler.errors import RequestValidationError


def resolve_model_version(session: Session, ref: str | None) -> ModelVersion:
    """The version `ref` names: `name@version` exactly, `name` = its production version, None = the newest
    production version of any name. Raises `RequestValidationError` (field `model`) when there is none."""
    query = select(ModelVersion)
    if ref:
        name, version = split_model_ref(ref)
        query = query.where(ModelVersion.name == name)
        if version is not None:
            query = query.where(ModelVersion.version == version)
        else:
            query = query.where(ModelVersion.status == ModelVersionStatus.PRODUCTION)
    else:
        query = query.where(ModelVersion.status == ModelVersionStatus.PRODUCTION)
    found = session.scalars(
        query.order_by(ModelVersion.version.desc(), ModelVersion.id.desc()).limit(1)
    ).first()
    if found is None:
        what = f"model {ref!r}" if ref else "a production model"
        raise RequestValidationError(
            "model", "registered", f"model: {what} is not registered (see GET /v1/models)"
        )
    if found.status is ModelVersionStatus.RETIRED:
        raise RequestValidationError(
            "model", "not_retired", f"model: {found.name}@{found.version} is retired"
        )
    return found


def get_model_version(session: Session, model_version_id: int) -> ModelVersion:
    """The model version row with this id; `NotFoundError` when missing."""
    found = session.get(ModelVersion, model_version_id)
    if found is None:
        raise NotFoundError(f"model version {model_version_id} not found")
    return found
