"""Twenty random `kill -9`s of the workers during one job: the job still completes, exactly once."""

from __future__ import annotations

import random

from sqlalchemy import func, select

from db.status import ChunkStatus
from db.tables import Chunk
from tests.faults.checks import assert_exactly_once
from tests.pipeline import PipelineStack, ServiceProcess, wait_for

KILLS = 20
IMAGES = 4000
# Attempts are spent by kills: give every chunk room for them (quarantine is another test's subject).
ATTEMPTS = "40"


def _leased_by(stack: PipelineStack, job_id: str) -> list[str]:
    with stack.session_factory() as session:
        return [
            str(worker)
            for worker in session.scalars(
                select(Chunk.leased_by).where(Chunk.job_id == job_id, Chunk.status == ChunkStatus.LEASED)
            ).all()
        ]


def test_twenty_random_kill_9s_during_one_job_lose_and_duplicate_nothing(stack: PipelineStack) -> None:
    # Given two workers and the reaper, and a 4,000-image job
    rng = random.Random(6)
    workers = [stack.start("worker", f"w{i}", CATALOGAN_MAX_ATTEMPTS=ATTEMPTS) for i in range(2)]
    stack.start("beat", CATALOGAN_MAX_ATTEMPTS=ATTEMPTS)
    job_id = stack.submit({"items": [{"category": "a", "count": IMAGES}], "chunk_size": 100, "seed": 61})
    # When, 20 times, a worker is SIGKILLed while a chunk is in progress and a fresh one replaces it
    kills = 0
    while kills < KILLS and not stack.job(job_id).status.is_terminal:
        wait_for(lambda: bool(_leased_by(stack, job_id)), timeout=60, what="a chunk in progress")
        holders = _leased_by(stack, job_id)
        by_pid = {f":{w.process.pid}": w for w in workers}
        holding = [w for suffix, w in by_pid.items() if any(h.endswith(suffix) for h in holders)]
        victim: ServiceProcess = rng.choice(holding or workers)
        victim.kill9()
        workers[workers.index(victim)] = stack.start("worker", f"w{kills}", CATALOGAN_MAX_ATTEMPTS=ATTEMPTS)
        kills += 1
    # Then all 20 kills landed before the job ended, and it completed with every image exactly once
    assert kills == KILLS
    stack.wait_terminal(job_id, timeout=240)
    assert_exactly_once(stack, job_id, IMAGES)
    with stack.session_factory() as session:  # the kills cost chunks attempts: they were redone
        assert int(session.scalar(select(func.max(Chunk.attempt)).where(Chunk.job_id == job_id)) or 0) >= 2
