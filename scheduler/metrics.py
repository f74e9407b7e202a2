"""Prometheus metrics, from SQL and the broker (so every API replica agrees).

The SQL aggregate is computed at most once per `cache_seconds` (`CATALOGAN_METRICS_CACHE_SECONDS`) and reused
by the scrapes in between: a scrape loop, or anyone who can reach /metrics, cannot make every call scan
the jobs, chunks and images tables. The throughput query reads images by `created_at` (indexed).

catalogan_queue_depth{queue}                messages waiting per queue
catalogan_images_per_second                 fleet throughput while busy over the last hour (as estimates use it)
catalogan_jobs{status}                      jobs per status
catalogan_images_failed                     failed images over all jobs
catalogan_chunks_quarantined                chunks in the dead-letter state
catalogan_job_latency_seconds{quantile}     submit → finish of jobs finished in the last hour
catalogan_http_requests_total{method,route,status}   requests this process answered
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from db.messaging import QUEUE_NAMES
from db.status import ChunkStatus, JobStatus
from db.tables import Chunk, Job, utcnow
from scheduler.estimates import measured_throughput

log = logging.getLogger(__name__)

LATENCY_WINDOW_SECONDS = 3600
DEFAULT_CACHE_SECONDS = 15.0
LATENCY_QUANTILES = (0.5, 0.9, 0.99)


def quantile(sorted_values: list[float], q: float) -> float:
    """The `q` quantile of already-sorted values (nearest rank)."""
    if not sorted_values:
        return 0.0
    rank = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[rank]


class PipelineCollector(Collector):
    """Reads queue depths, throughput, job counts, failures and latency when Prometheus scrapes."""

    def __init__(
        self,
        factory: sessionmaker[Session],
        queue_depth: Callable[[str], int] | None,
        default_rate: float,
        cache_seconds: float = DEFAULT_CACHE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.factory = factory
        self.queue_depth = queue_depth
        self.default_rate = default_rate
        self.cache_seconds = cache_seconds
        self.clock = clock
        self._cached: list[Metric] = []
        self._cached_at = -math.inf
        self._lock = threading.Lock()

    def collect(self) -> Iterator[Metric]:
        """Yield every metric family (a failing source is logged and skipped, never a failed scrape)."""
        depth = GaugeMetricFamily(
            "catalogan_queue_depth", "Messages waiting in a broker queue.", labels=["queue"]
        )
        if self.queue_depth is not None:
            for queue in QUEUE_NAMES:
                try:
                    depth.add_metric([queue], self.queue_depth(queue))
                except Exception as exc:
                    log.warning("queue depth of %s unavailable: %s", queue, exc)
        yield depth
        yield from self._sql_metrics()

    def _sql_metrics(self) -> list[Metric]:
        with self._lock:  # one computation at a time; scrapes meanwhile wait for it and reuse it
            if self.clock() - self._cached_at < self.cache_seconds:
                return self._cached
            try:
                with self.factory() as session:
                    self._cached = list(self._from_sql(session))
                self._cached_at = self.clock()
            except Exception as exc:
                log.warning("metrics from SQL unavailable: %s", exc)
                return []
            return self._cached

    def _from_sql(self, session: Session) -> Iterator[Metric]:
        now = utcnow()
        rate = measured_throughput(session, default=0.0, now=now)
        yield GaugeMetricFamily(
            "catalogan_images_per_second",
            "Images written per second over the last hour, counting only the 10 s spans in which any was written.",
            value=rate.images_per_second,
        )
        jobs = GaugeMetricFamily("catalogan_jobs", "Jobs per status.", labels=["status"])
        counts = {
            status: count
            for status, count in session.execute(select(Job.status, func.count()).group_by(Job.status))
        }
        for status in JobStatus:
            jobs.add_metric([status.value], counts.get(status, 0))
        yield jobs
        failed = session.scalar(select(func.coalesce(func.sum(Job.images_failed), 0))) or 0
        yield GaugeMetricFamily(
            "catalogan_images_failed", "Failed images over all jobs.", value=float(failed)
        )
        quarantined = session.scalar(select(func.count()).where(Chunk.status == ChunkStatus.QUARANTINED)) or 0
        yield GaugeMetricFamily(
            "catalogan_chunks_quarantined", "Chunks quarantined.", value=float(quarantined)
        )
        since = now - dt.timedelta(seconds=LATENCY_WINDOW_SECONDS)
        rows = session.execute(
            select(Job.created_at, Job.finished_at).where(
                Job.finished_at.is_not(None), Job.finished_at > since
            )
        ).all()
        latencies = sorted((finished - created).total_seconds() for created, finished in rows if finished)
        latency = GaugeMetricFamily(
            "catalogan_job_latency_seconds",
            "Submit-to-finish time of jobs finished in the last hour.",
            labels=["quantile"],
        )
        for q in LATENCY_QUANTILES:
            latency.add_metric([str(q)], quantile(latencies, q))
        yield latency


def make_registry(
    factory: sessionmaker[Session],
    queue_depth: Callable[[str], int] | None,
    default_rate: float,
    cache_seconds: float = DEFAULT_CACHE_SECONDS,
) -> tuple[CollectorRegistry, Counter]:
    """A registry for one app: the pipeline collector and an HTTP request counter."""
    registry = CollectorRegistry()
    registry.register(PipelineCollector(factory, queue_depth, default_rate, cache_seconds))
    requests = Counter(
        "catalogan_http_requests", "HTTP requests answered.", ["method", "route", "status"], registry=registry
    )
    return registry, requests
