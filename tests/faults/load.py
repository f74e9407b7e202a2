"""A bounded load test on loopback: N concurrent job submissions through the HTTP API, each client then
polling its job's status until it is finished. Shared by `tests/faults/test_load.py` and `bench/bench_load.py`.

    api = LiveApi(app).start()                      # uvicorn in a thread, on a free loopback port
    report = run_load(api.url, headers, submissions=200, concurrency=200)
    print(report.summary())
"""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from sqlalchemy import make_url, text

from db.engine import make_engine, transaction
from db.tenants import create_api_key, create_tenant
from tests.pipeline import ServiceProcess, make_model_version, pipeline_env, tiny_checkpoint
from tests.services import free_port

POLL_INTERVAL_SECONDS = 0.5
REQUEST_TIMEOUT_SECONDS = 60.0
CLIENT_KEEPALIVE_SECONDS = 1.0  # < uvicorn's default keep-alive of 5 s
TERMINAL = frozenset({"succeeded", "failed", "cancelled"})
# One tenant carries the whole load: its quotas must not be what the test measures.
LOAD_MAX_CONCURRENT_JOBS = 100_000
LOAD_REQUESTS_PER_MINUTE = 1_000_000
LOAD_IMAGES_PER_DAY = 10_000_000


def create_database(admin_url: str, prefix: str) -> str:
    """A fresh PostgreSQL database `<prefix>_<pid>_<random>` made through `admin_url`; returns its URL."""
    name = f"{prefix}_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    engine = make_engine(admin_url).execution_options(isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    engine.dispose()
    return make_url(admin_url).set(database=name).render_as_string(hide_password=False)


def drop_database(admin_url: str, url: str) -> None:
    """Drop the database of `url` (its connections closed by force), through `admin_url`."""
    engine = make_engine(admin_url).execution_options(isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{make_url(url).database}" WITH (FORCE)'))
    engine.dispose()


def start_tiny_workers(
    count: int,
    factory: Any,
    store: Any,
    *,
    db_url: str,
    redis_url: str,
    folder: Path,
    s3_env: dict[str, str],
    queues: str | None = None,
) -> list[ServiceProcess]:
    """Register the tiny model (its checkpoint in `store`) and start `count` CPU `catalogan worker` processes
    on it (consuming `queues`, all when None), logging to `folder/worker-<i>.log`: the benches' workers."""
    make_model_version(factory, checkpoint=tiny_checkpoint(), store=store)
    env = pipeline_env(
        CATALOGAN_DATABASE_URL=db_url,
        CATALOGAN_BROKER_URL=redis_url,
        CATALOGAN_STORAGE_URL=store.url,
        CATALOGAN_DATA_DIR=str(folder / "data"),
        CATALOGAN_DEVICE="cpu",
        **s3_env,
    )
    command = ["worker", "--gpus", "none", *(["--queues", queues] if queues else [])]
    return [ServiceProcess(command, env, folder / f"worker-{i}.log") for i in range(count)]


@dataclass
class BenchStack:
    """The services one bench run starts: a private Redis (or the one it was given), SeaweedFS, a fresh
    PostgreSQL database, `catalogan worker` processes on the tiny model, and the API once `serve` is called."""

    folder: Path
    redis_url: str
    db_url: str
    factory: Any
    store: Any
    workers: list[ServiceProcess]
    api: LiveApi | None = None

    def serve(self, settings: Any | None = None) -> LiveApi:
        """Start the real API on this stack (default settings, or `settings`); stopped with the stack."""
        self.api = serve_api(self.factory, self.store, self.redis_url, self.folder / "api-data", settings)
        return self.api


@contextmanager
def bench_stack(
    name: str,
    admin_url: str,
    *,
    workers: int,
    queues: str | None = None,
    redis_url: str = "",
    pool_size: int | None = None,
) -> Iterator[BenchStack]:
    """Start a bench's services (`BenchStack`), named `name` in the database, bucket prefix and temporary
    folder; stop them all and drop the database on the way out, whatever happened."""
    from db import migrate
    from db.engine import make_session_factory
    from db.storage import open_store
    from tests.faults.services import RedisServer
    from tests.services import TEST_BUCKET, SeaweedFS

    folder = Path(tempfile.mkdtemp(prefix=f"catalogan-{name}-"))
    redis_server = None
    if not redis_url:
        redis_server = RedisServer(folder / "redis")
        redis_server.start()
        redis_url = redis_server.url
    seaweed = SeaweedFS(folder / "seaweedfs")
    seaweed.start()
    os.environ.update(seaweed.env())
    db_url = create_database(admin_url, f"catalogan_{name}")
    stack: BenchStack | None = None
    try:
        migrate.upgrade(db_url)
        pool = {} if pool_size is None else {"pool_size": pool_size}
        factory = make_session_factory(make_engine(db_url, **pool))
        store = open_store(f"s3://{TEST_BUCKET}/{name}-{uuid.uuid4().hex[:8]}")
        stack = BenchStack(folder, redis_url, db_url, factory, store, [])
        stack.workers = start_tiny_workers(
            workers,
            factory,
            store,
            db_url=db_url,
            redis_url=redis_url,
            folder=folder,
            s3_env=seaweed.env(),
            queues=queues,
        )
        yield stack
    finally:
        if stack is not None and stack.api is not None:
            stack.api.stop()
        for worker in stack.workers if stack is not None else []:
            worker.stop()
        drop_database(admin_url, db_url)
        seaweed.stop()
        if redis_server is not None:
            redis_server.stop()
        shutil.rmtree(folder, ignore_errors=True)  # the worker logs, SeaweedFS and Redis data of this run


class LiveApi:
    """uvicorn serving an app on a free loopback port, in a daemon thread."""

    def __init__(self, app: Any) -> None:
        self.port = free_port()
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", backlog=2048)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        """The server's base URL."""
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_seconds: float = 20.0) -> LiveApi:
        """Start and wait until it serves."""
        self.thread.start()
        deadline = time.monotonic() + timeout_seconds
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        """Ask uvicorn to exit and wait for it."""
        self.server.should_exit = True
        self.thread.join(timeout=20)


def serve_api(
    session_factory: Any, store: Any, redis_url: str, data_dir: Path, settings: Any | None = None
) -> LiveApi:
    """The real API (default settings, or `settings`) on `session_factory`, `store` and the Redis broker
    `redis_url`, started."""
    from db.settings import BrokerSettings, DataSettings, StorageSettings
    from scheduler.api.app import build_services, create_app
    from scheduler.settings import ApiSettings

    settings = settings or ApiSettings()
    services = build_services(
        settings,
        broker=BrokerSettings(broker_url=redis_url),
        data=DataSettings(data_dir=data_dir),
        storage=StorageSettings(storage_url=store.url),
        session_factory=session_factory,
        store=store,
    )
    return LiveApi(create_app(settings, services=services)).start()


def load_tenant_headers(session_factory: Any, name: str = "load") -> tuple[str, dict[str, str]]:
    """A tenant with quotas out of the way and one key: (tenant id, Authorization header)."""
    with transaction(session_factory) as session:
        tenant = create_tenant(
            session,
            f"{name}-{time.monotonic_ns()}",
            max_concurrent_jobs=LOAD_MAX_CONCURRENT_JOBS,
            requests_per_minute=LOAD_REQUESTS_PER_MINUTE,
            images_per_day=LOAD_IMAGES_PER_DAY,
        )
        session.flush()
        key = create_api_key(session, tenant.id, name=name).clear_key
    return tenant.id, {"Authorization": f"Bearer {key}"}


@dataclass
class LoadReport:
    """Latencies (seconds) of every submit and status request, the failures, and the jobs' final statuses.

    `submit_at` / `poll_at` hold when each answered request started, in seconds since the run started, in the
    order of `submit_seconds` / `poll_seconds`.
    """

    submit_seconds: list[float] = field(default_factory=list)
    poll_seconds: list[float] = field(default_factory=list)
    submit_at: list[float] = field(default_factory=list)
    poll_at: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    final_status: dict[str, str] = field(default_factory=dict)
    wall_seconds: float = 0.0
    started: float = field(default_factory=time.perf_counter)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @staticmethod
    def percentile(values: list[float], q: float) -> float:
        """The q-th percentile (0..100) in milliseconds; 0 when there are no values."""
        if not values:
            return 0.0
        if len(values) == 1:
            return values[0] * 1000
        return statistics.quantiles(values, n=100, method="inclusive")[max(0, min(98, int(q) - 1))] * 1000

    def summary(self) -> str:
        """One paragraph: counts, p50/p99 per request kind, errors, wall time."""
        succeeded = sum(status == "succeeded" for status in self.final_status.values())
        return (
            f"{len(self.submit_seconds)} submissions, {len(self.poll_seconds)} status polls in "
            f"{self.wall_seconds:.1f} s; jobs succeeded {succeeded}/{len(self.final_status)}; errors {len(self.errors)}\n"
            f"POST /v1/jobs      p50 {self.percentile(self.submit_seconds, 50):7.1f} ms  "
            f"p99 {self.percentile(self.submit_seconds, 99):7.1f} ms\n"
            f"GET /v1/jobs/{{id}}  p50 {self.percentile(self.poll_seconds, 50):7.1f} ms  "
            f"p99 {self.percentile(self.poll_seconds, 99):7.1f} ms"
        )


def _client_run(
    client: httpx.Client, headers: dict[str, str], body: dict[str, Any], report: LoadReport, deadline: float
) -> None:
    """One client's whole life: submit, then poll until the job finishes or the deadline passes."""
    started = time.perf_counter()
    try:
        response = client.post("/v1/jobs", json=body, headers=headers)
    except httpx.HTTPError as exc:
        with report.lock:
            report.errors.append(f"POST: {type(exc).__name__}: {exc}")
        return
    elapsed = time.perf_counter() - started
    with report.lock:
        report.submit_seconds.append(elapsed)
        report.submit_at.append(started - report.started)
    if response.status_code != 201:
        with report.lock:
            report.errors.append(f"POST: {response.status_code} {response.text[:200]}")
        return
    job_id = response.json()["id"]
    while time.monotonic() < deadline:
        time.sleep(POLL_INTERVAL_SECONDS)
        started = time.perf_counter()
        try:
            response = client.get(f"/v1/jobs/{job_id}", headers=headers)
        except httpx.HTTPError as exc:
            with report.lock:
                report.errors.append(f"GET: {type(exc).__name__}: {exc}")
            continue
        with report.lock:
            report.poll_seconds.append(time.perf_counter() - started)
            report.poll_at.append(started - report.started)
        if response.status_code != 200:
            with report.lock:
                report.errors.append(f"GET: {response.status_code} {response.text[:200]}")
            continue
        status = response.json()["status"]
        if status in TERMINAL:
            with report.lock:
                report.final_status[job_id] = status
            return
    with report.lock:
        report.errors.append(f"job {job_id}: not finished before the deadline")
        report.final_status[job_id] = "timeout"


def run_load(
    base_url: str,
    headers: dict[str, str] | list[dict[str, str]],
    *,
    submissions: int,
    concurrency: int,
    job_body: Callable[[int], dict[str, Any]],
    timeout_seconds: float = 600.0,
) -> LoadReport:
    """Run `submissions` clients, `concurrency` at a time: each submits `job_body(i)` and polls it to the end.

    With a list of headers (one per tenant), client i speaks for tenant i modulo their number.
    """
    tenants = headers if isinstance(headers, list) else [headers]
    report = LoadReport()
    deadline = time.monotonic() + timeout_seconds
    started = report.started = time.perf_counter()
    # One shared httpx client with a connection per thread: 200 clients each building their own (and its TLS
    # context) cost seconds of this process's CPU, which the API in the same process then lacked. Idle
    # connections are dropped well before uvicorn's 5 s keep-alive ends them: reusing one the server is just
    # closing fails the request ("Server disconnected", "Connection reset"), a client-side race, not an API error.
    limits = httpx.Limits(
        max_connections=concurrency,
        max_keepalive_connections=concurrency,
        keepalive_expiry=CLIENT_KEEPALIVE_SECONDS,
    )
    with (
        httpx.Client(base_url=base_url, timeout=REQUEST_TIMEOUT_SECONDS, limits=limits) as client,
        ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="load") as pool,
    ):
        futures = [
            pool.submit(_client_run, client, tenants[i % len(tenants)], job_body(i), report, deadline)
            for i in range(submissions)
        ]
        for future in futures:
            future.result()
    report.wall_seconds = time.perf_counter() - started
    return report
