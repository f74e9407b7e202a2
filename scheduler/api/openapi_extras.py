"""What the OpenAPI document says beyond the routes: stable operationIds and the `webhooks` section.

operationIds are the route functions' names in lowerCamelCase (`create_job` → `createJob`), with a few renamed to
read as API verbs; generated SDKs and docs link to them, so renaming a route function renames its operationId —
`tests/scheduler/test_openapi_document.py` pins the list. The `webhooks` section documents every event type the
dispatcher sends (`scheduler.webhooks.EVENTS`), each with the Standard Webhooks envelope as its body.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute
from pydantic import BaseModel, Field

from scheduler.webhooks import EVENTS

# Route function → operationId, where lowerCamelCase of the function name would not read as an API verb.
RENAMED_OPERATIONS = {
    "show_job": "getJob",
    "healthz": "getHealth",
    "readyz": "getReadiness",
    "metrics": "getMetrics",
}

EVENT_DESCRIPTIONS = {
    "job.started": "The first chunk of the job was claimed by a worker.",
    "job.progress": "Counts moved (at most one per CATALOGAN_WEBHOOK_PROGRESS_INTERVAL_SECONDS).",
    "job.completed": "The job succeeded: every image was delivered; the manifest is written.",
    "job.completed_with_failures": "Some images failed (quarantined chunks), the others were delivered; "
    "data.images_failed counts them, the manifest is written, POST /v1/jobs/{id}/retry runs them again.",
    "job.failed": "No image was delivered (every image failed); the manifest is written.",
    "job.cancelled": "The job was cancelled; finished images stay.",
    "job.reviewed": "Every delivered image of the job has a review decision (made in the console).",
}


def operation_id(route: APIRoute) -> str:
    """The stable operationId of a route: its function name in lowerCamelCase, or its entry in the renames."""
    if route.name in RENAMED_OPERATIONS:
        return RENAMED_OPERATIONS[route.name]
    first, *rest = route.name.split("_")
    return first + "".join(word.capitalize() for word in rest)


class JobEventData(BaseModel):
    """The job as it stood when the event was written."""

    job_id: str
    status: str
    images_total: int
    images_done: int
    images_failed: int
    images_rejected: int
    manifest_key: str | None = None
    metadata: dict[str, str] = Field(default_factory=dict, description="The job's labels given at submit.")
    error: str | None = None
    started_at: dt.datetime | None = None
    finished_at: dt.datetime | None = None
    reviews: dict[str, int] | None = Field(
        default=None, description="job.reviewed only: approved and rejected counts."
    )


class WebhookEvent(BaseModel):
    """A webhook body (Standard Webhooks). Headers: `webhook-id` (the same on every retry: deduplicate on it),
    `webhook-timestamp` (Unix seconds) and `webhook-signature` (`v1,` + base64 HMAC-SHA256 of
    `{id}.{timestamp}.{body}` with the tenant's secret)."""

    type: str = Field(description="The event type, e.g. job.completed.", examples=["job.completed"])
    timestamp: dt.datetime
    data: JobEventData


def document_webhooks(app: FastAPI) -> None:
    """Add one entry per event type to the document's `webhooks` section."""
    for event in EVENTS:
        description = EVENT_DESCRIPTIONS.get(event, "")

        def receive(body: WebhookEvent) -> None:  # documentation only: catalogan sends, it never receives
            """Answer 2xx to acknowledge; any other answer or a timeout is retried with backoff."""

        receive.__doc__ = (
            f"{description} Answer 2xx to acknowledge; any other answer is retried with backoff."
        )
        app.webhooks.add_api_route(
            event,
            receive,
            methods=["POST"],
            summary=f"{event} event",
            operation_id=f"on{''.join(part.capitalize() for part in event.split('.'))}",
            responses={200: {"description": "Acknowledged."}},
        )


def webhook_event_types(document: dict[str, Any]) -> list[str]:
    """The event types an OpenAPI document's `webhooks` section lists."""
    return sorted(document.get("webhooks", {}))
