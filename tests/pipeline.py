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

from sqlalchemy.orm import Session, sessionmaker

from db.engine import transaction
from db.status import ModelVersionStatus
from db.storage import ObjectStore
from db.tables import Job, ModelVersion, Tenant

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


def wait_for(predicate: Callable[[], bool], *, timeout: float, interval: float = 0.2, what: str = "condition") -> None:
    """Poll until `predicate()` is true; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


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
