"""`catalogan beat`: the reaper loop (torch-free; never imports workers or models)."""

from __future__ import annotations

import logging
import signal
import threading
from typing import Any

import click

from scheduler.cli.errors import one_line_errors


@click.command("beat")
@click.option("--once", is_flag=True, help="Run one repair pass and exit.")
@click.option(
    "--interval",
    type=float,
    default=None,
    help="Seconds between passes [default: CATALOGAN_REAPER_INTERVAL_SECONDS or 5].",
)
@one_line_errors
def beat(once: bool, interval: float | None) -> None:
    """Run the periodic steps: the reaper (re-enqueue expired or lost chunks, quarantine, finalize
    stragglers) and the webhook outbox (job events, signed deliveries with retries).

    Run exactly one `catalogan beat` per deployment (two are safe — every repair is a guarded UPDATE —
    but publish duplicate messages). It talks to the broker by task name only.

    Example:

        CATALOGAN_BROKER_URL=redis://localhost:6379/0 catalogan beat
    """
    from db.engine import engine_from_settings, make_session_factory
    from db.messaging import CeleryPublisher, make_celery_app, queue_depth
    from db.pipeline_settings import ReaperSettings
    from db.settings import BrokerSettings, DatabaseSettings, DataSettings
    from scheduler.periodic import PeriodicStep, run_periodic
    from scheduler.reaper import Reaper
    from scheduler.settings import WebhookSettings
    from scheduler.webhooks import run_webhook_tick

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    data = DataSettings()
    settings = ReaperSettings()
    app = make_celery_app(BrokerSettings(), data)
    publisher = CeleryPublisher(app)
    session_factory = make_session_factory(engine_from_settings(DatabaseSettings(), data))
    webhook_settings = WebhookSettings()
    reaper = Reaper(
        session_factory,
        publisher=publisher,
        publish_finalize=lambda queue, job_id: publisher.publish_finalize(queue, job_id),
        queue_depth=lambda queue: queue_depth(app, queue),
        settings=settings,
    )
    stop = threading.Event()

    def request_stop(_signum: int, _frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    every = interval or settings.reaper_interval_seconds
    reaper_steps = [PeriodicStep("reaper", every, reaper.reap_once)]
    # Webhook deliveries wait on other people's servers (up to the timeout each): their own thread, so a slow
    # receiver never delays the repairs.
    webhook_steps = [
        PeriodicStep("webhooks", every, lambda: run_webhook_tick(session_factory, webhook_settings))
    ]
    results: dict[str, int] = {}
    webhook_thread = threading.Thread(
        target=lambda: results.__setitem__("webhooks", run_periodic(webhook_steps, stop, once=once)),
        name="webhooks",
        daemon=True,
    )
    webhook_thread.start()
    failures = run_periodic(reaper_steps, stop, once=once)
    if not once:
        stop.set()
    webhook_thread.join(timeout=webhook_settings.webhook_timeout_seconds * 2)
    failures += results.get("webhooks", 0)
    if once and failures:
        raise click.ClickException(f"{failures} periodic step(s) failed; see the log above")
