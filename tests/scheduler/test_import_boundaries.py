"""The scheduler never imports torch, `models` or `workers` — checked in a fresh interpreter."""

from __future__ import annotations

import json
import subprocess
import sys

PROBE = """
import json, sys
from scheduler.api.app import create_app
from scheduler.settings import ApiSettings
import scheduler.client, scheduler.webhooks, scheduler.cli.root
for name in ("serve", "tenants", "keys", "jobs", "workers", "dlq"):
    __import__(f"scheduler.cli.{name}")
create_app(ApiSettings())
heavy = sorted(m for m in sys.modules if m.split(".")[0] in {"torch", "models", "workers", "torchvision", "ray"})
print(json.dumps(heavy))
"""


def test_the_app_sdk_and_cli_modules_import_no_torch(tmp_path: object) -> None:
    """Given a fresh interpreter, when the app is built and the SDK and CLI modules imported, then no torch,
    models or workers module is loaded."""
    env = {"CATALOGAN_DATA_DIR": str(tmp_path), "CATALOGAN_STORAGE_URL": "memory://", "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []


def test_every_scheduler_module_imports_on_its_own_in_a_fresh_interpreter() -> None:
    """Given each module of the scheduler package, when it is the first thing a fresh interpreter imports,
    then it loads (no import cycle hides behind the order in which the app imports them)."""
    import pkgutil

    import scheduler

    names = sorted(info.name for info in pkgutil.walk_packages(scheduler.__path__, "scheduler."))
    probe = "import importlib, sys\nfor name in sys.argv[1:]:\n    importlib.import_module(name)\n"
    failures = []
    for name in names:
        result = subprocess.run(
            [sys.executable, "-c", probe, name], capture_output=True, text=True, timeout=120
        )
        if result.returncode != 0:
            failures.append(f"{name}: {result.stderr.strip().splitlines()[-1]}")
    assert failures == []
