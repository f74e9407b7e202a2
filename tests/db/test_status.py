"""Status transitions: every pair outside the allowed maps raises; the allowed ones pass."""

from __future__ import annotations

import enum
import itertools
from collections.abc import Mapping

import pytest

from db.errors import InvalidTransitionError
from db.status import (
    CHUNK_TERMINAL,
    CHUNK_TRANSITIONS,
    JOB_TERMINAL,
    JOB_TRANSITIONS,
    MODEL_VERSION_TRANSITIONS,
    ChunkStatus,
    JobStatus,
    ModelVersionStatus,
    check_transition,
    sources_of,
)

MAPS: list[tuple[type[enum.StrEnum], Mapping]] = [
    (JobStatus, JOB_TRANSITIONS),
    (ChunkStatus, CHUNK_TRANSITIONS),
    (ModelVersionStatus, MODEL_VERSION_TRANSITIONS),
]
ALL_PAIRS = [
    pytest.param(cls, allowed, current, target, id=f"{cls.__name__}:{current.value}->{target.value}")
    for cls, allowed in MAPS
    for current, target in itertools.product(list(cls), repeat=2)
]


@pytest.mark.parametrize(("cls", "allowed", "current", "target"), ALL_PAIRS)
def test_every_transition_is_allowed_exactly_when_the_map_says_so(
    cls: type[enum.StrEnum],
    allowed: Mapping,
    current: enum.StrEnum,
    target: enum.StrEnum,
) -> None:
    """Given any (current, target) pair, check_transition passes if the map lists it and raises otherwise,
    with both statuses in the message."""
    if target in allowed[current]:
        check_transition("thing", current, target, allowed)
    else:
        with pytest.raises(InvalidTransitionError, match=f"'{current.value}' to '{target.value}'"):
            check_transition("thing", current, target, allowed)


@pytest.mark.parametrize(("cls", "allowed"), [pytest.param(c, a, id=c.__name__) for c, a in MAPS])
def test_every_status_has_an_entry_in_its_map(cls: type[enum.StrEnum], allowed: Mapping) -> None:
    """Given a status enum, its map names every member as a source, so no status is a dead end by omission."""
    assert set(allowed) == set(cls)


def test_terminal_job_and_chunk_states_cannot_be_left_except_by_retry() -> None:
    """Given a terminal status, only the documented retries lead out of it (failed or completed_with_failures job, quarantined chunk)."""
    assert {s for s in JOB_TERMINAL if JOB_TRANSITIONS[s]} == {
        JobStatus.FAILED,
        JobStatus.COMPLETED_WITH_FAILURES,
    }
    assert JOB_TRANSITIONS[JobStatus.FAILED] == {JobStatus.QUEUED}
    assert {s for s in CHUNK_TERMINAL if CHUNK_TRANSITIONS[s]} == {ChunkStatus.QUARANTINED}
    assert all(status.is_terminal for status in JOB_TERMINAL | CHUNK_TERMINAL)
    assert not JobStatus.RUNNING.is_terminal and not ChunkStatus.LEASED.is_terminal


def test_sources_of_lists_every_status_that_may_reach_a_target() -> None:
    """Given a target, sources_of returns exactly the statuses whose allowed set contains it."""
    assert sources_of(JobStatus.CANCELLED, JOB_TRANSITIONS) == {JobStatus.QUEUED, JobStatus.CANCELLING}
    assert sources_of(JobStatus.QUEUED, JOB_TRANSITIONS) == {
        JobStatus.FAILED,
        JobStatus.COMPLETED_WITH_FAILURES,
    }
    assert sources_of(ChunkStatus.SUCCEEDED, CHUNK_TRANSITIONS) == {ChunkStatus.LEASED}
