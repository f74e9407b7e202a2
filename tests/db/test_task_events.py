"""Celery task events are on with Redis (Flower and `celery events` see the workers) and off on the folder broker."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any

import pytest

from db.messaging import GENERATE_CHUNK_TASK, CeleryPublisher, make_celery_app
from db.settings import BrokerSettings, DataSettings

pytestmark = pytest.mark.integration

EVENT_WAIT_SECONDS = 15.0


def test_publishing_a_chunk_sends_a_task_sent_event_on_redis(redis_url: str, tmp_path: Path) -> None:
    """Given an event receiver on the Redis broker (what Flower runs), when a chunk is published, then a
    task-sent event names the generate-chunk task and its queue."""
    app = make_celery_app(BrokerSettings(broker_url=redis_url), DataSettings(data_dir=tmp_path))
    seen: list[dict[str, Any]] = []
    with app.connection() as connection:
        receiver = app.events.Receiver(connection, handlers={"task-sent": seen.append})
        events = receiver.itercapture(limit=None, timeout=EVENT_WAIT_SECONDS / 10, wakeup=False)
        next(events)  # the first step declares and binds the receiver's queue (and yields its consumer)
        CeleryPublisher(app)("bulk", [7])
        deadline = time.monotonic() + EVENT_WAIT_SECONDS
        while not seen and time.monotonic() < deadline:
            with contextlib.suppress(TimeoutError):
                next(events)
    assert seen, "no task-sent event within the wait"
    assert seen[0]["name"] == GENERATE_CHUNK_TASK and seen[0]["queue"] == "bulk"


def test_the_folder_broker_sends_no_events(tmp_path: Path) -> None:
    """Given the embedded folder broker (no fanout), when the app is made, then task events stay off."""
    app = make_celery_app(BrokerSettings(broker_url=""), DataSettings(data_dir=tmp_path))
    assert app.conf.worker_send_task_events is False and app.conf.task_send_sent_event is False
