"""`/v1/models`: the registered generator versions a job can name."""

from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy import select

from db.tables import ModelVersion
from scheduler.api.deps import SessionDep, TenantDep
from scheduler.api.problems import COMMON_ERRORS
from scheduler.api.schemas import ModelList
from scheduler.api.views import model_public

router = APIRouter(prefix="/v1", tags=["models"])


@router.get("/models", response_model=ModelList, summary="List model versions", responses=COMMON_ERRORS)
def list_models(session: SessionDep, tenant: TenantDep) -> ModelList:
    """Every model version with its status (candidate, production, retired), categories and metrics."""
    rows = session.scalars(
        select(ModelVersion).order_by(ModelVersion.name, ModelVersion.version.desc())
    ).all()
    return ModelList(data=[model_public(row) for row in rows])
