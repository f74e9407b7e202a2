"""What `catalogan worker` and `catalogan generate` share about the worker processes they start: the settings that
size them, the queue names they take, and a child's tie to its parent.

Here, not in `workers.cli`, because `generate` (which `workers.cli` serves) checks these before it submits.
"""

from __future__ import annotations

import signal
import sys

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from db.settings import BaseSettings  # pydantic-settings whose errors name the CATALOGAN_* variable


class WorkerProcessSettings(BaseSettings):
    """How many processes `catalogan worker` runs when --concurrency / --processes-per-gpu are not given.

    Read here rather than by click's `envvar`, which called a malformed variable a bad option (`Invalid value
    for '--concurrency'`, exit 2); a setting is one line naming the variable, exit 6 (docs/cli.md)."""

    model_config = SettingsConfigDict(
        env_prefix="CATALOGAN_", extra="ignore", frozen=True, env_ignore_empty=True
    )

    worker_concurrency: int | None = Field(
        default=None, ge=1, description="CPU worker processes; unset = one per usable core, at least 2."
    )
    processes_per_gpu: int = Field(default=1, ge=1, description="Worker processes sharing each GPU.")


def queue_names(value: str) -> list[str]:
    """The queues a comma-separated `value` names, highest priority first whatever the order typed (the Redis
    transport pops them in this order); `ValueError` stating the rule for an unknown or missing name."""
    from db.messaging import QUEUE_NAMES, check_queue

    names = [check_queue(name.strip()) for name in value.split(",") if name.strip()]
    if not names:
        raise ValueError(f"name at least one queue of {', '.join(QUEUE_NAMES)}")
    return sorted(dict.fromkeys(names), key=QUEUE_NAMES.index)


def die_with_parent(signum: int = signal.SIGKILL) -> None:
    """In a child before exec: `signum` when the supervisor dies, even by kill -9 (Linux PR_SET_PDEATHSIG).
    `catalogan generate` asks for SIGTERM, so that its worker releases its chunk on the way out."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signum)  # 1 = PR_SET_PDEATHSIG
