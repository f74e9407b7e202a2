"""The workers' Celery app: the shared broker contract from `db.messaging` with the tasks registered.

`celery -A workers.celery_app worker` works too, but `catalogan worker` is the supported way to start one.
"""

from __future__ import annotations

from celery.signals import worker_shutting_down

from db.messaging import make_celery_app
from db.settings import BrokerSettings, DataSettings
from workers.broker_watchdog import BrokerWatchdog
from workers.context import SHUTDOWN
from workers.tasks import register_tasks

app = make_celery_app(BrokerSettings(), DataSettings())
register_tasks(app)
app.steps["consumer"].add(BrokerWatchdog)  # reconnect a worker left connected but idle


@worker_shutting_down.connect
def _stop_between_batches(**_: object) -> None:
    # SIGTERM / SIGINT: the running chunk stops at its next batch boundary and releases its lease.
    SHUTDOWN.set()
