"""A consumer of several queues on Redis takes the highest-priority queue first (interactive > bulk > backfill):
the broker's queue order strategy is `priority`, not kombu's default round robin."""

from __future__ import annotations

from pathlib import Path

import pytest
from kombu import Consumer, Message

from db.messaging import QUEUE_NAMES, CeleryPublisher, make_celery_app
from db.settings import BrokerSettings, DataSettings

pytestmark = pytest.mark.integration


def test_a_worker_of_every_queue_takes_interactive_chunks_before_bulk_and_bulk_before_backfill(
    redis_url: str, tmp_path: Path
) -> None:
    """Given chunk messages waiting in backfill, bulk and interactive (published in that order), when one
    consumer of all three queues (as `catalogan worker` runs by default) takes them one at a time, then it
    takes every interactive one, then every bulk one, then backfill."""
    app = make_celery_app(BrokerSettings(broker_url=redis_url), DataSettings(data_dir=tmp_path))
    publish = CeleryPublisher(app)
    publish("backfill", [31, 32])
    publish("bulk", [21, 22])
    publish("interactive", [11, 12])
    taken: list[int] = []

    def take(body: object, message: Message) -> None:
        taken.append(int(message.headers["argsrepr"].strip("[]")))
        message.ack()

    queues = [app.amqp.queues[name] for name in QUEUE_NAMES]
    with app.connection() as connection, Consumer(connection, queues, callbacks=[take], prefetch_count=1):
        while len(taken) < 6:
            connection.drain_events(timeout=5)
    assert taken == [11, 12, 21, 22, 31, 32]
