"""Status enums and their allowed-transitions maps.

A status only changes through the `db` functions that call `check_transition`; anything else is a bug.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import TypeVar

from db.errors import InvalidTransitionError


class JobStatus(enum.StrEnum):
    """Lifecycle of a job: queued → running → succeeded | failed | cancelled (through cancelling)."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        """True for succeeded, failed and cancelled."""
        return self in JOB_TERMINAL


class ChunkStatus(enum.StrEnum):
    """Lifecycle of a chunk; `leased` carries an attempt number and a lease expiry."""

    PENDING = "pending"
    LEASED = "leased"
    SUCCEEDED = "succeeded"
    QUARANTINED = "quarantined"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        """True for succeeded, quarantined and cancelled."""
        return self in CHUNK_TERMINAL


class ImageStatus(enum.StrEnum):
    """Outcome of one image."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    REJECTED = "rejected"


class ModelVersionStatus(enum.StrEnum):
    """Lifecycle of a registered generator: candidate → production → retired."""

    CANDIDATE = "candidate"
    PRODUCTION = "production"
    RETIRED = "retired"


class DeliveryStatus(enum.StrEnum):
    """Lifecycle of a webhook delivery in the outbox."""

    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


S = TypeVar("S", bound=enum.StrEnum)

JOB_TERMINAL = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})
CHUNK_TERMINAL = frozenset({ChunkStatus.SUCCEEDED, ChunkStatus.QUARANTINED, ChunkStatus.CANCELLED})

JOB_TRANSITIONS: Mapping[JobStatus, frozenset[JobStatus]] = {
    JobStatus.QUEUED: frozenset(
        {JobStatus.RUNNING, JobStatus.CANCELLING, JobStatus.CANCELLED, JobStatus.FAILED}
    ),
    JobStatus.RUNNING: frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLING}),
    JobStatus.CANCELLING: frozenset({JobStatus.CANCELLED}),
    # A failed job can be retried (its failed images only); nothing leaves succeeded or cancelled.
    JobStatus.FAILED: frozenset({JobStatus.QUEUED}),
    JobStatus.SUCCEEDED: frozenset(),
    JobStatus.CANCELLED: frozenset(),
}

CHUNK_TRANSITIONS: Mapping[ChunkStatus, frozenset[ChunkStatus]] = {
    ChunkStatus.PENDING: frozenset({ChunkStatus.LEASED, ChunkStatus.QUARANTINED, ChunkStatus.CANCELLED}),
    # leased → leased is a reclaim after the lease expired (attempt + 1).
    ChunkStatus.LEASED: frozenset(
        {
            ChunkStatus.LEASED,
            ChunkStatus.PENDING,
            ChunkStatus.SUCCEEDED,
            ChunkStatus.QUARANTINED,
            ChunkStatus.CANCELLED,
        }
    ),
    ChunkStatus.QUARANTINED: frozenset({ChunkStatus.PENDING}),  # retry
    ChunkStatus.SUCCEEDED: frozenset(),
    ChunkStatus.CANCELLED: frozenset(),
}

MODEL_VERSION_TRANSITIONS: Mapping[ModelVersionStatus, frozenset[ModelVersionStatus]] = {
    ModelVersionStatus.CANDIDATE: frozenset({ModelVersionStatus.PRODUCTION, ModelVersionStatus.RETIRED}),
    ModelVersionStatus.PRODUCTION: frozenset({ModelVersionStatus.RETIRED}),
    ModelVersionStatus.RETIRED: frozenset({ModelVersionStatus.CANDIDATE}),
}


def check_transition(what: str, current: S, target: S, allowed: Mapping[S, frozenset[S]]) -> None:
    """Raise `InvalidTransitionError` unless `current → target` is in `allowed`."""
    if target not in allowed[current]:
        raise InvalidTransitionError(f"{what}: cannot go from {current.value!r} to {target.value!r}")


def sources_of(target: S, allowed: Mapping[S, frozenset[S]]) -> frozenset[S]:
    """Every status from which `target` may be reached (for guarded UPDATE ... WHERE status IN (...))."""
    return frozenset(source for source, targets in allowed.items() if target in targets)
