"""Helpers for the generation-pipeline tests: a tenant, a registered tiny model version, worker processes."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from sqlalchemy.orm import Session, sessionmaker

from db.engine import transaction
from db.status import ModelVersionStatus
from db.storage import ObjectStore
from db.tables import Job, ModelVersion, Tenant

T = TypeVar("T")
TINY_CATEGORIES = ("a", "b", "c")
CATALOGAN = [sys.executable, "-c", "from scheduler.cli import main; main()"]


def make_tenant(session_factory: sessionmaker[Session], name: str = "acme") -> str:
    """Insert a tenant; return its id."""
    tenant_id = uuid.uuid4().hex
    with transaction(session_factory) as session:
        session.add(Tenant(id=tenant_id, name=f"{name}-{tenant_id[:6]}"))
    return tenant_id


def make_model_version(
    session_factory: sessionmaker[Session],
    *,
    checkpoint: bytes = b"",
    store: ObjectStore | None = None,
    categories: tuple[str, ...] = TINY_CATEGORIES,
    name: str = "tiny",
    version: int = 1,
) -> ModelVersion:
    """Register a model version (uploading `checkpoint` to `store` when given)."""
    key = f"models/{name}/{version}/generator.ckpt"
    if store is not None:
        store.put(key, checkpoint)
    with transaction(session_factory) as session:
        row = ModelVersion(
            name=name,
            version=version,
            preset="tiny",
            architecture="cgan",
            config={},
            categories=list(categories),
            checkpoint_uri=store.uri(key) if store is not None else f"memory://{key}",
            checkpoint_sha256=hashlib.sha256(checkpoint).hexdigest() if checkpoint else "",
            status=ModelVersionStatus.PRODUCTION,
        )
        session.add(row)
        session.flush()
    return row


def tiny_checkpoint(seed: int = 0) -> bytes:
    """A randomly initialised tiny generator checkpoint (8x8 grey, categories a/b/c)."""
    from models.inference import random_generator_checkpoint

    return random_generator_checkpoint("tiny", seed=seed)


def wait_for(
    predicate: Callable[[], bool], *, timeout: float, interval: float = 0.2, what: str = "condition"
) -> None:
    """Poll until `predicate()` is true; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def freeze_check_kill(
    pid: int, holds: Callable[[], T | None], *, timeout: float = 60, reap: Callable[[], object] | None = None
) -> T:
    """SIGSTOP `pid`, and SIGKILL it if `holds()` finds something (returned); else SIGCONT and try again."""
    deadline = time.monotonic() + timeout
    while True:
        os.kill(pid, signal.SIGSTOP)
        try:
            held = holds()
        except BaseException:
            os.kill(pid, signal.SIGCONT)  # never leave it frozen behind a failing check
            raise
        if held is not None:
            os.kill(pid, signal.SIGKILL)
            if reap is not None:
                reap()
            return held
        os.kill(pid, signal.SIGCONT)
        if time.monotonic() > deadline:
            raise AssertionError(f"process {pid} held nothing to interrupt within {timeout:.0f} s")
        time.sleep(0.05)


def job_row(session_factory: sessionmaker[Session], job_id: str) -> Job:
    """A fresh copy of a job row."""
    with session_factory() as session:
        job = session.get(Job, job_id)
        assert job is not None
        return job


class ServiceProcess:
    """A `catalogan worker` or `catalogan beat` subprocess with its log in a file."""

    def __init__(self, args: list[str], env: dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        self._log = log_path.open("ab")
        self.process = subprocess.Popen([*CATALOGAN, *args], env=env, stdout=self._log, stderr=self._log)

    def kill9(self) -> None:
        """SIGKILL: the worker dies without releasing anything."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def kill9_while(self, holds: Callable[[], T | None], *, timeout: float = 60) -> T:
        """SIGKILL the process at a moment when `holds()` finds something (say, the chunk it has leased) and
        return that. The process is frozen with SIGSTOP while `holds()` looks, so it cannot finish in between."""
        return freeze_check_kill(self.process.pid, holds, timeout=timeout, reap=self.process.wait)

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM, then SIGKILL after `timeout`; returns the exit code."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        return int(self.process.returncode)

    def log(self) -> str:
        """The process's output so far."""
        return self.log_path.read_text(errors="replace")


def pipeline_env(**overrides: str) -> dict[str, str]:
    """The environment for pipeline subprocesses: ours, minus any CATALOGAN_* of the caller, plus overrides."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("CATALOGAN_")}
    env.update(overrides)
    return env


class PipelineStack:
    """Real PostgreSQL + Redis + SeaweedFS, a registered tiny model, and worker / beat subprocesses."""

    def __init__(
        self, *, db_url: str, redis_url: str, store: ObjectStore, s3_env: dict[str, str], folder: Path
    ) -> None:
        from db.engine import make_engine, make_session_factory
        from db.messaging import CeleryPublisher, make_celery_app
        from db.settings import BrokerSettings, DataSettings

        self.folder = folder
        self.store = store
        self.redis_url = redis_url
        self.engine = make_engine(db_url)
        self.session_factory = make_session_factory(self.engine)
        self.env = pipeline_env(
            CATALOGAN_DATABASE_URL=db_url,
            CATALOGAN_BROKER_URL=redis_url,
            CATALOGAN_STORAGE_URL=store.url,
            CATALOGAN_DATA_DIR=str(folder / "data"),
            CATALOGAN_LEASE_SECONDS="3",
            CATALOGAN_BATCH_SIZE="25",
            CATALOGAN_UPLOAD_THREADS="4",
            CATALOGAN_MAX_ATTEMPTS="3",
            CATALOGAN_RETRY_DELAY_SECONDS="0.2",
            CATALOGAN_TEST_FAULTS="1",
            # One process per `worker` (tests count and kill processes); the --concurrency test sets 2.
            CATALOGAN_WORKER_CONCURRENCY="1",
            CATALOGAN_REAPER_INTERVAL_SECONDS="0.5",
            CATALOGAN_REPUBLISH_AFTER_SECONDS="2",
            CATALOGAN_FINALIZE_GRACE_SECONDS="2",
            **s3_env,
        )
        self.app = make_celery_app(
            BrokerSettings(broker_url=redis_url), DataSettings(data_dir=folder / "data")
        )
        self.publisher = CeleryPublisher(self.app)
        self.tenant_id = make_tenant(self.session_factory)
        self.model_version = make_model_version(
            self.session_factory, checkpoint=tiny_checkpoint(), store=store
        )
        self.processes: list[ServiceProcess] = []

    def start(self, kind: str, name: str | None = None, **env: str) -> ServiceProcess:
        """Start `catalogan worker` (kind="worker") or `catalogan beat` (kind="beat")."""
        args = ["worker", "--gpus", "none"] if kind == "worker" else ["beat"]
        log = self.folder / f"{name or kind}-{len(self.processes)}.log"
        process = ServiceProcess(args, {**self.env, **env}, log)
        self.processes.append(process)
        return process

    def submit(self, spec: dict[str, object]) -> str:
        """Plan and publish a job; return its id."""
        from db.planning import parse_job_spec, submit_job

        planned = submit_job(
            self.session_factory,
            parse_job_spec({"model": "tiny", **spec}),
            tenant_id=self.tenant_id,
            model_version=self.model_version,
            publisher=self.publisher,
        )
        return planned.job_id

    def job(self, job_id: str) -> Job:
        """A fresh copy of the job row."""
        return job_row(self.session_factory, job_id)

    def wait_terminal(self, job_id: str, timeout: float = 240) -> Job:
        """Wait until the job is succeeded, failed or cancelled; dump process logs on timeout."""
        try:
            wait_for(
                lambda: self.job(job_id).status.is_terminal, timeout=timeout, what=f"job {job_id} to finish"
            )
        except AssertionError:
            for process in self.processes:
                print(f"==== {process.log_path.name}\n{process.log()[-4000:]}")
            raise
        return self.job(job_id)

    def image_keys(self, job_id: str) -> list[str]:
        """The image objects stored for a job (manifests excluded)."""
        prefix = f"{self.tenant_id}/jobs/{job_id}/"
        return [
            info.key
            for info in self.store.list(prefix)
            if not info.key.rsplit("/", 1)[-1].startswith("manifest")
        ]

    def close(self) -> None:
        """Stop every process and dispose of the engine."""
        for process in self.processes:
            process.stop()
        self.engine.dispose()
