"""Turning table rows into response schemas (and the ETA a job view carries)."""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping
from typing import Any

from db.latent_control import control_of_options
from db.status import JobStatus
from db.tables import Image, Job, ModelVersion, utcnow
from scheduler.api.schemas import (
    CountsPublic,
    ImagePublic,
    ImageRefPublic,
    InterpolationPublic,
    JobPublic,
    ModelMetricsSummary,
    ModelPublic,
    ModelVersionRef,
    VariationPublic,
)


def eta_seconds(job: Job, now: dt.datetime | None = None) -> float | None:
    """Seconds left at the job's own rate so far; None before the first image or once it is finished."""
    if job.status is not JobStatus.RUNNING or job.started_at is None:
        return None
    finished = job.images_done + job.images_failed + job.images_rejected
    if finished <= 0:
        return None
    elapsed = ((now or utcnow()) - job.started_at).total_seconds()
    remaining = max(0, job.images_total - finished)
    return round(remaining * max(elapsed, 0.0) / finished, 1)


def _source(source: Mapping[str, Any]) -> ImageRefPublic:
    return ImageRefPublic(job_id=str(source["job_id"]), index=int(source["index"]))


def control_public(job: Job) -> dict[str, Any]:
    """The job's creative control as the job view shows it (`truncation`, `variation`, `interpolation`), from
    the recipe planning stored (`db.latent_control`); every field None for a plain job with ψ 1.0."""
    recipe = control_of_options(job.options) or {}
    variation = recipe.get("variation")
    interpolation = recipe.get("interpolation")
    return {
        "truncation": float(recipe["truncation"]) if "truncation" in recipe else None,
        "variation": VariationPublic(
            source=_source(variation["source"]),
            strength=float(variation["strength"]),
            count=job.images_total,
        )
        if variation
        else None,
        "interpolation": InterpolationPublic(
            start=_source(interpolation["start"]),
            end=_source(interpolation["end"]),
            frames=int(interpolation["frames"]),
        )
        if interpolation
        else None,
    }


def job_public(
    job: Job,
    model: ModelVersion | None,
    *,
    now: dt.datetime | None = None,
    skipped_existing: tuple[int, int] = (0, 0),
) -> JobPublic:
    """The public view of a job; `skipped_existing` = (items, images) skipped as already delivered."""
    finished = job.images_done + job.images_failed + job.images_rejected
    return JobPublic(
        id=job.id,
        status=job.status,
        model=ModelVersionRef(name=model.name, version=model.version) if model else None,
        seed=job.seed,
        output_format=job.output_format,
        chunk_size=job.chunk_size,
        quota_cost=job.quota_cost,
        counts=CountsPublic(
            images_total=job.images_total,
            images_done=job.images_done,
            images_failed=job.images_failed,
            images_rejected=job.images_rejected,
            chunks_total=job.chunks_total,
            chunks_finished=job.chunks_finished,
            items_skipped_existing=skipped_existing[0],
            images_skipped_existing=skipped_existing[1],
        ),
        progress=min(1.0, finished / job.images_total) if job.images_total else 0.0,
        eta_seconds=eta_seconds(job, now),
        cancel_requested=job.cancel_requested,
        webhook_url=job.webhook_url,
        metadata=job.job_metadata or {},
        queue=job.queue,  # type: ignore[arg-type]  # one of QUEUE_NAMES, as planning wrote it
        webhook_events=job.webhook_events,
        error=job.error,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        retention_days=job.retention_days,
        expires_at=job.expires_at,
        **control_public(job),
    )


def image_public(image: Image, url: str | None, expires_at: dt.datetime | None) -> ImagePublic:
    """The public view of an image row with its presigned URL (None when it has no object)."""
    return ImagePublic(
        index=image.index,
        category=image.category,
        sku=image.sku,
        status=image.status,
        key=image.key,
        sha256=image.sha256,
        size_bytes=image.size_bytes,
        width=image.width,
        height=image.height,
        url=url,
        url_expires_at=expires_at,
        error=image.error,
    )


def metrics_summary(metrics: Mapping[str, Any]) -> ModelMetricsSummary:
    """The summary fields of a version's stored metrics; anything else stored there is left out."""
    summary: dict[str, float | int] = {}
    for name, info in ModelMetricsSummary.model_fields.items():
        value = metrics.get(name)
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            summary[name] = int(value) if info.annotation == int | None else float(value)
    return ModelMetricsSummary.model_validate(summary)


def model_public(model: ModelVersion) -> ModelPublic:
    """The public view of a model version."""
    return ModelPublic(
        name=model.name,
        version=model.version,
        status=model.status,
        preset=model.preset,
        architecture=model.architecture,
        categories=list(model.categories or []),
        metrics=metrics_summary(model.metrics or {}),
        created_at=model.created_at,
        promoted_at=model.promoted_at,
    )
