"""Detect and recover from the "connected but idle" worker: Redis went away, and the consumer stopped polling.

When a Redis connection drops, kombu's Redis transport unregisters the socket from the worker's event loop
and stops re-registering it, but raises nothing if the drop was noticed outside the poll (for instance by
the ack of a task that ran while Redis restarted). The worker then looks healthy and never consumes again.

This consumer bootstep checks the event loop on a timer. The timer fires only while the loop runs, that is
between tasks. If the loop is polling no socket at all on `MISSES_BEFORE_RESET` checks in a row, the step raises
a connection error from the loop. Celery handles it like any lost broker: it logs "Connection to broker lost",
reconnects and consumes again.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import bootsteps

logger = logging.getLogger(__name__)

WATCHDOG_INTERVAL_SECONDS = 2.0
MISSES_BEFORE_RESET = 2


class BrokerIdleError(ConnectionError):
    """Raised inside the worker's event loop when it polls no broker socket: Celery reconnects on it."""


class BrokerWatchdog(bootsteps.StartStopStep):
    """A consumer bootstep: reconnect when the event loop has silently stopped polling the broker."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, c: Any, **kwargs: Any) -> None:
        self.timer_entry: Any = None
        self.misses = 0
        super().__init__(c, **kwargs)

    def start(self, c: Any) -> None:
        """Check the loop every `WATCHDOG_INTERVAL_SECONDS` (only with an event loop: Redis, not the folder)."""
        hub = getattr(c, "hub", None)
        if hub is None:
            return
        self.misses = 0
        self.timer_entry = c.timer.call_repeatedly(WATCHDOG_INTERVAL_SECONDS, self.check, (hub,))

    def check(self, hub: Any) -> None:
        """Count checks that find no socket polled; raise `BrokerIdleError` after `MISSES_BEFORE_RESET`."""
        if hub.readers:
            self.misses = 0
            return
        self.misses += 1
        if self.misses >= MISSES_BEFORE_RESET:
            self.misses = 0
            logger.warning("the worker polls no broker connection (connected but idle): reconnecting")
            raise BrokerIdleError("the event loop polls no broker socket")

    def stop(self, c: Any) -> None:
        """Cancel the timer (the step starts again with the next connection)."""
        if self.timer_entry is not None:
            self.timer_entry.cancel()
            self.timer_entry = None

    shutdown = stop
