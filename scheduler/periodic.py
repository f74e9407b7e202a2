"""The clock of `catalogan beat`: a plain loop that runs periodic steps every few seconds.

A plain loop, not Celery beat, because the reaper repairs the broker's losses and so must not depend on
the broker to be scheduled (see docs/architecture.md). Other periodic steps (webhook dispatch, retention)
register as more `PeriodicStep`s. A failing step is logged and retried at the next tick; the loop never dies
of a database or broker outage.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PeriodicStep:
    """A named callable run every `interval_seconds`."""

    name: str
    interval_seconds: float
    run: Callable[[], object]


def run_periodic(
    steps: Sequence[PeriodicStep],
    stop: threading.Event,
    *,
    once: bool = False,
    errors: list[Exception] | None = None,
) -> int:
    """Run each step when it is due until `stop` is set (or one round, with `once`); returns failed runs.

    With `errors`, each failure is appended there and logged in one line (its traceback at debug): the caller
    reports it (`catalogan beat --once` turns the first into its exit code), and a database that is down is
    not worth a page of driver frames per step."""
    next_due = {step.name: 0.0 for step in steps}
    failures = 0
    while not stop.is_set():
        now = time.monotonic()
        for step in steps:
            if now < next_due[step.name]:
                continue
            try:
                step.run()
            except Exception as exc:
                failures += 1
                if errors is None:
                    logger.exception("periodic step %s failed; retrying next tick", step.name)
                else:
                    errors.append(exc)
                    first_line = (str(exc).splitlines() or [""])[0]
                    logger.error("periodic step %s failed: %s: %s", step.name, type(exc).__name__, first_line)
                    logger.debug("periodic step %s failed", step.name, exc_info=True)
            next_due[step.name] = time.monotonic() + step.interval_seconds
        if once:
            break
        wait = min(next_due.values()) - time.monotonic()
        stop.wait(max(0.05, wait))
    return failures
