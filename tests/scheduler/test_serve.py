"""`catalogan serve` starts the API under uvicorn from CATALOGAN_* settings alone."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from db import migrate
from tests.scheduler.conftest import free_port

pytestmark = pytest.mark.slow


def test_serve_answers_health_and_readiness(tmp_path: Path) -> None:
    """Given an embedded stack in a temporary folder, when `catalogan serve` runs, then /healthz and /readyz
    answer 200 and /openapi.json describes the jobs API; SIGTERM stops it."""
    database = f"sqlite:///{tmp_path / 'catalogan.db'}"
    migrate.upgrade(database)
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("CATALOGAN_")},
        "CATALOGAN_DATA_DIR": str(tmp_path),
        "CATALOGAN_DATABASE_URL": database,
    }
    command = [sys.executable, "-c", "from scheduler.cli import main; main()", "serve", "--port", str(port)]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
                break
            except httpx.TransportError:
                assert process.poll() is None, process.stdout.read().decode() if process.stdout else ""
                assert time.monotonic() < deadline, "catalogan serve did not start"
                time.sleep(0.2)
        assert health.json() == {"status": "ok"}
        assert httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5).status_code == 200
        assert "/v1/jobs" in httpx.get(f"http://127.0.0.1:{port}/openapi.json", timeout=5).json()["paths"]
    finally:
        process.terminate()
        # uvicorn shuts down gracefully, then re-raises SIGTERM so the exit status tells how it ended.
        assert process.wait(timeout=30) in (0, -15)
