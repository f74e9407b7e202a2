"""The broker contract shared by workers, the API and the reaper: task names, queues, the Celery app.

Torch-free: `scheduler` publishes by task *name* through the app built here and never imports `workers`.
Messages carry ids only (JSON), and every task is safe to run twice — SQL, not the broker, is the truth.

    GENERATE_CHUNK_TASK  args [chunk_id]   claim → generate → upload → rows → complete (workers)
    FINALIZE_JOB_TASK    args [job_id]     manifest → final status → webhook outbox row (workers)
    PREVIEW_TASK         args [request]    a few images into the object store, result.json beside them
                                           (sent by the API's previews, interactive queue; workers)

The embedded default (no `CATALOGAN_BROKER_URL`) is kombu's `filesystem://` transport: one message is one
file in `<data_dir>/broker/queue/`, so a worker subprocess and the `catalogan generate` command talk through
a folder, with the same Celery code path as Redis.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, get_args

from celery import Celery
from kombu import Exchange, Queue

from db.job_specs import QueueName
from db.settings import BrokerSettings, DataSettings

logger = logging.getLogger(__name__)

GENERATE_CHUNK_TASK = "catalogan.generate_chunk"
FINALIZE_JOB_TASK = "catalogan.finalize_job"
PREVIEW_TASK = "catalogan.generate_preview"

INTERACTIVE_QUEUE = "interactive"
BULK_QUEUE = "bulk"
BACKFILL_QUEUE = "backfill"
QUEUE_NAMES: tuple[str, ...] = (INTERACTIVE_QUEUE, BULK_QUEUE, BACKFILL_QUEUE)  # highest priority first
assert set(QUEUE_NAMES) == set(get_args(QueueName))  # one vocabulary with the job spec

# Redis re-delivers an unacknowledged message after this long; leases, not this, bound a chunk's retry delay.
VISIBILITY_TIMEOUT_SECONDS = 6 * 3600
BROKER_CONNECT_MAX_RETRIES = 10
PUBLISH_MAX_RETRIES = 5
PUBLISH_RETRY_INTERVAL_SECONDS = 0.5
# The filesystem transport polls its folder; a short interval keeps the embedded stack snappy.
FILESYSTEM_POLLING_INTERVAL_SECONDS = 0.1


class Publisher(Protocol):
    """Sends one `generate_chunk` message per chunk id to a queue (after the SQL commit that created them)."""

    def __call__(self, queue: str, chunk_ids: Sequence[int]) -> None:
        """Publish the chunk ids; raise when the broker refuses (the reaper republishes later)."""


def broker_folders(data: DataSettings) -> dict[str, Path]:
    """The folders of the embedded filesystem broker under `<data_dir>/broker/`, created if missing."""
    root = data.resolved / "broker"
    folders = {"queue": root / "queue", "control": root / "control", "processed": root / "processed"}
    for folder in folders.values():
        folder.mkdir(parents=True, exist_ok=True)
    return folders


def broker_url_and_options(broker: BrokerSettings, data: DataSettings) -> tuple[str, dict[str, Any]]:
    """The broker URL and transport options: Redis when configured, else the embedded folder."""
    if not broker.embedded:
        # `priority`: a worker of several queues pops them in its queue order, highest first (QUEUE_NAMES;
        # `catalogan worker` sorts its queues so), where kombu's default would take them in turn.
        return broker.broker_url, {
            "visibility_timeout": VISIBILITY_TIMEOUT_SECONDS,
            "queue_order_strategy": "priority",
        }
    folders = broker_folders(data)
    # One folder for in and out: producers and consumers are different processes sharing it.
    options = {
        "data_folder_in": str(folders["queue"]),
        "data_folder_out": str(folders["queue"]),
        "control_folder": str(folders["control"]),
        "processed_folder": str(folders["processed"]),
        "store_processed": False,
        "polling_interval": FILESYSTEM_POLLING_INTERVAL_SECONDS,
    }
    return "filesystem://", options


def make_celery_app(broker: BrokerSettings, data: DataSettings, *, main: str = "catalogan") -> Celery:
    """A Celery app configured for catalogan's delivery contract; tasks are registered by `workers`.

    JSON only, late acks, rejection on worker loss, prefetch 1, three named queues, no result backend
    (progress lives in SQL), and broker retries at start-up and on publish.
    """
    url, options = broker_url_and_options(broker, data)
    app = Celery(main, broker=url, set_as_current=False)
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        event_serializer="json",
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        result_backend=None,
        task_queues=[Queue(name, Exchange(name, type="direct"), routing_key=name) for name in QUEUE_NAMES],
        task_default_queue=BULK_QUEUE,
        task_create_missing_queues=False,
        broker_transport_options=options,
        broker_connection_retry=True,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=BROKER_CONNECT_MAX_RETRIES,
        task_publish_retry=True,
        task_publish_retry_policy={
            "max_retries": PUBLISH_MAX_RETRIES,
            "interval_start": 0,
            "interval_step": PUBLISH_RETRY_INTERVAL_SECONDS,
            "interval_max": 2.0,
        },
        worker_hijack_root_logger=False,
        # Task events (task-sent, -received, -started, -succeeded, ...) on Redis, so Flower and `celery events`
        # show the workers: `celery -A workers.celery_app flower`. The folder transport has no fanout: off there.
        worker_send_task_events=not broker.embedded,
        task_send_sent_event=not broker.embedded,
        # Remote control (pidbox) lets `catalogan workers` ping idle workers; the folder transport has no
        # broadcast, so the embedded stack keeps it off.
        worker_enable_remote_control=not broker.embedded,
        broker_connection_timeout=5,
    )
    return app


def check_queue(queue: str) -> str:
    """Return `queue` if it is one of catalogan's queues; raise ValueError otherwise."""
    if queue not in QUEUE_NAMES:
        raise ValueError(f"queue {queue!r}: must be one of {', '.join(QUEUE_NAMES)}")
    return queue


class CeleryPublisher:
    """A `Publisher` that sends `generate_chunk` tasks by name through one pooled producer connection."""

    def __init__(self, app: Celery) -> None:
        self.app = app

    def __call__(self, queue: str, chunk_ids: Sequence[int]) -> None:
        """Publish one message per chunk id to `queue`."""
        check_queue(queue)
        if not chunk_ids:
            return
        with self.app.producer_or_acquire() as producer:
            for chunk_id in chunk_ids:
                self.app.send_task(GENERATE_CHUNK_TASK, args=[int(chunk_id)], queue=queue, producer=producer)

    def publish_finalize(
        self, queue: str, job_id: str, *, countdown: float | None = None, superseding: Sequence[str] = ()
    ) -> None:
        """Ask a worker to finalize a job (idempotent: finalizing a finished job is a no-op); with
        `superseding`, to write its manifests again over what those dead finalizes left (`workers.finalize`)."""
        kwargs = {"superseding": [str(write_id) for write_id in superseding]} if superseding else None
        self.app.send_task(
            FINALIZE_JOB_TASK, args=[job_id], kwargs=kwargs, queue=check_queue(queue), countdown=countdown
        )

    def publish_chunk(self, queue: str, chunk_id: int, *, countdown: float | None = None) -> None:
        """Publish one chunk, optionally delayed (a retry after a failed attempt)."""
        self.app.send_task(
            GENERATE_CHUNK_TASK, args=[int(chunk_id)], queue=check_queue(queue), countdown=countdown
        )


def queue_depth(app: Celery, queue: str) -> int:
    """Messages waiting in `queue` (Redis: the list lengths; filesystem: the files); 0 for an unknown queue.

    Messages a worker holds unacknowledged are not counted: the reaper only uses this to decide that a
    pending chunk's message cannot still be in the queue.
    """
    with app.connection_for_read() as connection:
        channel = connection.default_channel
        try:
            return int(channel.queue_declare(queue=queue, passive=True).message_count)
        except Exception as exc:  # kombu raises ChannelError "NOT_FOUND" for a queue Redis no longer holds
            logger.debug("queue %s: no depth (%s); counting it as empty", queue, exc)
            return 0
