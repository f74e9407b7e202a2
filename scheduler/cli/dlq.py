"""`catalogan dlq ls|retry`: quarantined chunks (the dead-letter queue), straight from SQL."""

from __future__ import annotations

import click
from sqlalchemy import select

from db.chunk_outcomes import retry_failed_images
from db.cli_support import one_line_errors
from db.engine import transaction
from db.errors import NotFoundError
from db.messaging import CeleryPublisher, make_celery_app
from db.publish_window import publish_window_chunks, refill
from db.settings import BrokerSettings, DataSettings
from db.status import ChunkStatus
from db.tables import Chunk, Job
from scheduler.cli.database import cli_session_factory
from scheduler.cli.output import current_format, json_option, print_json, print_rows

COLUMNS = ("chunk", "job", "tenant", "start", "stop", "attempt", "error", "finished_at")
TABLE_ERROR_CHARS = 200  # a terminal table shows the start of a long error; TSV and JSON carry all of it


@click.group("dlq")
def dlq() -> None:
    """Inspect and retry quarantined chunks (those that failed every attempt).

    Example:

    \b
        catalogan dlq ls --limit 20
    """


@dlq.command("ls")
@click.option(
    "--job", "job_id", default=None, help="Only this job's chunks (exit 3 for a job that does not exist)."
)
@click.option(
    "--limit", type=click.IntRange(1, 10_000), default=100, show_default=True, help="How many chunks."
)
@json_option
@one_line_errors
def list_quarantined(job_id: str | None, limit: int, as_json: bool) -> None:
    """List quarantined chunks with their last error, newest first.

    Example:

    \b
        catalogan dlq ls --job 4f0c2a9e8b7d4c6a9e2f1b3d5c7a9e0f --json
    """
    with cli_session_factory()() as session:
        if job_id is not None and session.scalar(select(Job.id).where(Job.id == job_id)) is None:
            # An empty listing would read as "nothing quarantined" for a mistyped job id.
            raise NotFoundError(f"--job: job {job_id!r} not found")
        query = (
            select(Chunk, Job.tenant_id)
            .join(Job, Job.id == Chunk.job_id)
            .where(Chunk.status == ChunkStatus.QUARANTINED)
        )
        if job_id is not None:
            query = query.where(Chunk.job_id == job_id)
        rows = session.execute(query.order_by(Chunk.finished_at.desc(), Chunk.id.desc()).limit(limit)).all()
    error_chars = TABLE_ERROR_CHARS if current_format() == "table" else None
    data = [
        {
            "chunk": chunk.id,
            "job": chunk.job_id,
            "tenant": tenant,
            "start": chunk.start_index,
            "stop": chunk.stop_index,
            "attempt": chunk.attempt,
            "error": (chunk.last_error or "")[:error_chars],
            "finished_at": chunk.finished_at,
        }
        for chunk, tenant in rows
    ]
    print_rows(data, COLUMNS, as_json=as_json, title="quarantined chunks")


@dlq.command("retry")
@click.argument("job_id")
@json_option
@one_line_errors
def retry(job_id: str, as_json: bool) -> None:
    """Put a job's quarantined chunks back on its queue (as `POST /v1/jobs/{id}/retry` does): they are held
    again and published through the tenant's publish window (`CATALOGAN_PUBLISH_WINDOW_CHUNKS`), as many as it
    has room for now, the rest as the tenant's chunks finish. A broker that does not answer is logged; the
    reaper publishes those chunks: `published` lists only what the broker took, and a warning on stderr says
    when it took nothing.

    Example:

    \b
        catalogan dlq retry 4f0c2a9e8b7d4c6a9e2f1b3d5c7a9e0f
    """
    factory = cli_session_factory()
    with transaction(factory) as session:
        tenant_id = session.scalar(select(Job.tenant_id).where(Job.id == job_id))
        if tenant_id is None:
            raise NotFoundError(f"job {job_id!r} not found")
        plan = retry_failed_images(session, job_id, tenant_id=tenant_id)
    publisher = CeleryPublisher(make_celery_app(BrokerSettings(), DataSettings()))
    failures: list[Exception] = []
    published = refill(
        factory,
        publisher,
        tenant_id,
        plan.queue,
        window=publish_window_chunks(),
        on_send_failure=failures.append,
    )
    if failures:
        # The retry itself is done (the chunks are pending again): only the send waits, so exit 0 with a warning.
        reason = (str(failures[0]).splitlines() or [type(failures[0]).__name__])[0]
        click.echo(
            f"Warning: the broker did not take the chunks ({type(failures[0]).__name__}: {reason}); "
            "`catalogan beat` publishes them once it answers",
            err=True,
        )
    if as_json:
        print_json(
            {"job": job_id, "chunks": list(plan.chunk_ids), "queue": plan.queue, "published": published}
        )
    else:
        click.echo(
            f"job {job_id}: {len(plan.chunk_ids)} chunks back on the {plan.queue} queue "
            f"({len(published)} of the tenant's held chunks published now, the rest as its window frees)"
        )
