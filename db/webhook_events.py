"""The webhook events of a job, one vocabulary for the API, the outbox writers and the OpenAPI document.

A job may subscribe to some of them (`webhook_events`, stored in `jobs.webhook_events`; None = every event).
Every writer of an outbox row asks `wants_event` first, so an event the job did not subscribe to is never
written, let alone sent:

    scheduler/webhooks.py   job.started, job.progress, the terminal event (beat), job.reviewed (console)
    workers/finalize.py     the terminal event, as `job.<status>` (`job.succeeded` is sent as `job.completed`)

    wants_event(["job.completed"], "job.succeeded")   # True
    wants_event(["job.completed"], "job.progress")    # False
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Annotated, Any, Literal, get_args

from pydantic import AfterValidator, Field
from pydantic_core import PydanticCustomError

if TYPE_CHECKING:
    from db.tables import Job

WebhookEventName = Literal[
    "job.started",
    "job.progress",
    "job.completed",
    "job.completed_with_failures",
    "job.failed",
    "job.cancelled",
    "job.reviewed",
]
WEBHOOK_EVENTS: tuple[str, ...] = get_args(WebhookEventName)
# Other names an outbox row may carry for an event: the finalize step writes `job.<status>`.
WEBHOOK_EVENT_ALIASES = {"job.succeeded": "job.completed"}


def public_event_name(event: str) -> str:
    """The name receivers see for an outbox row's event (`job.succeeded` → `job.completed`)."""
    return WEBHOOK_EVENT_ALIASES.get(event, event)


def wants_event(subscribed: Sequence[str] | None, event: str) -> bool:
    """Whether a job subscribed to `subscribed` (None = every event) gets `event` (either of its names)."""
    return subscribed is None or public_event_name(event) in subscribed


def _no_duplicates(value: list[str]) -> list[str]:
    seen: set[str] = set()
    for event in value:
        if event in seen:
            raise PydanticCustomError("unique_events", "{event!r} is listed twice", {"event": event})
        seen.add(event)
    return value


# The one declaration of a job's event filter (JobSpec and the API's JobCreate both use it).
WebhookEvents = Annotated[
    list[WebhookEventName],
    Field(
        max_length=len(WEBHOOK_EVENTS),
        description="Only these events are sent for this job (each at most once in the list); omitted = every "
        "event, [] = none. The names are those of the document's `webhooks` section.",
        examples=[["job.completed", "job.failed"]],
        json_schema_extra={"uniqueItems": True},
    ),
    AfterValidator(_no_duplicates),  # after the length bound: a 10,000-entry list is refused unread
]


def job_event_data(job: Job) -> dict[str, Any]:
    """The `data` of a job event (stored as the outbox row's payload), the same for every writer: the beat's
    events and the workers' terminal event carry the fields docs/api.md and the OpenAPI `JobEventData` list."""
    return {
        "job_id": job.id,
        "status": job.status.value,
        "images_total": job.images_total,
        "images_done": job.images_done,
        "images_failed": job.images_failed,
        "images_rejected": job.images_rejected,
        "manifest_key": job.manifest_key,
        "metadata": dict(job.job_metadata or {}),
        "error": job.error,
        "started_at": job.started_at.isoformat() if job.started_at else None,
        "finished_at": job.finished_at.isoformat() if job.finished_at else None,
    }
