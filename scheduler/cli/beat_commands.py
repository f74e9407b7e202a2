"""`catalogan beat`: the reaper loop (torch-free; never imports workers or models)."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import click

from db.cli_support import FiniteFloat, one_line_errors, output_file

MAX_INTERVAL_SECONDS = 3600.0  # an hour between repair passes: anything longer is a typo (ms for s)


def heartbeat_file_option(ctx: click.Context, param: click.Parameter, value: Path | None) -> Path | None:
    """`--heartbeat-file`: its folder must be a writable folder and the file, when it exists, writable — checked
    before beat starts (a file in place of the folder was a traceback every pass, then "1 periodic step(s)
    failed")."""
    value = output_file(ctx, param, value)
    if value is not None and value.exists() and not os.access(value, os.W_OK):
        raise click.BadParameter(f"{str(value)!r} is not writable", ctx=ctx, param=param)
    return value


@click.command("beat")
@click.option("--once", is_flag=True, help="Run one repair pass and exit.")
@click.option(
    "--interval",
    type=FiniteFloat(min=0, max=MAX_INTERVAL_SECONDS, min_open=True),
    default=None,
    help="Seconds between passes, > 0 [default: CATALOGAN_REAPER_INTERVAL_SECONDS, else 5].",
)
@click.option(
    "--heartbeat-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    callback=heartbeat_file_option,
    help="Touch this file after every successful reaper pass (for a container healthcheck); its folder must "
    "exist and be writable.",
)
@click.option(
    "--check-heartbeat",
    "check_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Do not run: exit 0 when this heartbeat file was touched within --max-age seconds, else 1.",
)
@click.option(
    "--max-age",
    type=FiniteFloat(min=1),
    default=60.0,
    show_default=True,
    help="Seconds a heartbeat stays fresh for --check-heartbeat.",
)
@one_line_errors
def beat(
    once: bool,
    interval: float | None,
    heartbeat_file: Path | None,
    check_file: Path | None,
    max_age: float,
) -> None:
    """Run the periodic steps: the reaper, the webhook outbox and retention.

    The reaper re-enqueues expired or lost chunks, quarantines, and finalizes stragglers; the webhook outbox
    sends job events (signed deliveries with retries); retention deletes finished jobs past their expires_at
    (objects, then rows). A failing step is logged and retried at the next tick; with --once the first
    failure decides the exit code (5 when the database, broker or store did not answer).

    Run exactly one `catalogan beat` per deployment (two are safe — every repair is a guarded UPDATE —
    but publish duplicate messages). It talks to the broker by task name only.

    Example:

        CATALOGAN_BROKER_URL=redis://localhost:6379/0 catalogan beat --heartbeat-file /tmp/beat.alive
    """
    if check_file is not None:
        sys.exit(check_heartbeat(check_file, max_age))
    from db.engine import engine_from_settings, make_session_factory
    from db.messaging import CeleryPublisher, make_celery_app, queue_depth
    from db.pipeline_settings import ReaperSettings
    from db.settings import BrokerSettings, DatabaseSettings, DataSettings, StorageSettings
    from db.storage import open_store
    from scheduler.periodic import PeriodicStep, run_periodic
    from scheduler.reaper import Reaper, delete_expired_jobs
    from scheduler.settings import WebhookSettings
    from scheduler.webhooks import run_webhook_tick

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Every setting first: a bad one is one line (exit 6) before anything is created or any step runs.
    data = DataSettings()
    settings = ReaperSettings()
    broker_settings, database_settings = BrokerSettings(), DatabaseSettings()
    storage_url = StorageSettings().url(data)
    webhook_settings = WebhookSettings()
    app = make_celery_app(broker_settings, data)
    publisher = CeleryPublisher(app)
    session_factory = make_session_factory(engine_from_settings(database_settings, data))
    reaper = Reaper(
        session_factory,
        publisher=publisher,
        publish_finalize=publisher.publish_finalize,
        queue_depth=lambda queue: queue_depth(app, queue),
        settings=settings,
    )
    stop = threading.Event()

    def request_stop(_signum: int, _frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    every = interval if interval is not None else settings.reaper_interval_seconds

    def reap_and_beat() -> None:
        reaper.reap_once()  # raises when SQL or the broker fails: then no heartbeat
        if heartbeat_file is not None:
            heartbeat_file.touch()

    reaper_steps = [PeriodicStep("reaper", every, reap_and_beat)]
    # Webhook deliveries wait on other people's servers (up to the timeout each): their own thread, so a slow
    # receiver never delays the repairs.
    webhook_steps = [
        PeriodicStep("webhooks", every, lambda: run_webhook_tick(session_factory, webhook_settings))
    ]
    results: dict[str, int] = {}
    # --once reports its failures itself (one log line per step, then the first one as the exit code); the
    # loop logs each with its traceback and carries on.
    reaper_errors: list[Exception] | None = [] if once else None
    webhook_errors: list[Exception] | None = [] if once else None
    retention_errors: list[Exception] | None = [] if once else None
    webhook_thread = threading.Thread(
        target=lambda: results.__setitem__(
            "webhooks", run_periodic(webhook_steps, stop, once=once, errors=webhook_errors)
        ),
        name="webhooks",
        daemon=True,
    )
    webhook_thread.start()
    # Retention deletes objects in the store (many, for a large job): its own thread too, never holding a
    # database connection while the store works (scheduler.reaper.delete_expired_jobs).
    store = open_store(storage_url)
    retention_steps = [
        PeriodicStep(
            "retention",
            settings.retention_interval_seconds,
            lambda: delete_expired_jobs(session_factory, store, settings),
        )
    ]
    retention_thread = threading.Thread(
        target=lambda: results.__setitem__(
            "retention", run_periodic(retention_steps, stop, once=once, errors=retention_errors)
        ),
        name="retention",
        daemon=True,
    )
    retention_thread.start()
    failures = run_periodic(reaper_steps, stop, once=once, errors=reaper_errors)
    if not once:
        stop.set()
    webhook_thread.join(timeout=webhook_settings.webhook_timeout_seconds * 2)
    retention_thread.join(timeout=60)
    failures += results.get("webhooks", 0) + results.get("retention", 0)
    if once and failures:
        errors = [*(reaper_errors or []), *(webhook_errors or []), *(retention_errors or [])]
        if errors:
            # Raised again for `one_line_errors`, the one place that maps errors to exit codes: a database or
            # broker that did not answer is exit 5 in one line, a project error its own code, a bug exit 1
            # with its traceback.
            raise errors[0]
        raise click.ClickException(f"{failures} periodic step(s) failed; see the log above")


def check_heartbeat(path: Path, max_age_seconds: float) -> int:
    """0 when `path` was touched within `max_age_seconds`, else 1 (with the reason on stderr)."""
    try:
        age = time.time() - path.stat().st_mtime
    except OSError:
        click.echo(f"Error: no heartbeat at {path} yet (no reaper pass has succeeded)", err=True)
        return 1
    if age > max_age_seconds:
        click.echo(
            f"Error: the last successful reaper pass was {age:.0f} s ago (> {max_age_seconds:.0f} s)",
            err=True,
        )
        return 1
    return 0
