"""Thin Celery tasks: parse the id, call the plain function with the process's context."""

from __future__ import annotations

from typing import Any

from celery import Celery

from db.messaging import FINALIZE_JOB_TASK, GENERATE_CHUNK_TASK, PREVIEW_TASK, CeleryPublisher


def register_tasks(app: Celery) -> None:
    """Register `generate_chunk`, `finalize_job` and `generate_preview` on `app` under their contract names."""
    publisher = CeleryPublisher(app)

    @app.task(name=GENERATE_CHUNK_TASK, ignore_result=True)
    def generate_chunk_task(chunk_id: int) -> str:
        from workers.chunk_generation import generate_chunk
        from workers.context import get_context

        return generate_chunk(get_context(publisher), int(chunk_id)).value

    @app.task(name=FINALIZE_JOB_TASK, ignore_result=True)
    def finalize_job_task(job_id: str, superseding: list[str] | None = None) -> str | None:
        from workers.context import get_context
        from workers.finalize import finalize_job

        context = get_context(publisher)
        written_over = [str(write_id) for write_id in superseding or ()]
        status = finalize_job(context.session_factory, context.store, str(job_id), superseding=written_over)
        return status.value if status is not None else None

    @app.task(name=PREVIEW_TASK, ignore_result=True)
    def generate_preview_task(request: dict[str, Any]) -> None:
        from workers.context import get_context
        from workers.previews import generate_preview

        context = get_context(publisher)
        generate_preview(
            request,
            session_factory=context.session_factory,
            store=context.store,
            generators=context.generators,
        )
