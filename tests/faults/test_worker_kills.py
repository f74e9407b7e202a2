"""kill -9 of workers during a job (twenty random ones; one of the processes of `--concurrency 2`): exactly once."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from sqlalchemy import func, select

from db.status import ChunkStatus
from db.tables import Chunk
from tests.faults.checks import assert_exactly_once
from tests.pipeline import PipelineStack, ServiceProcess, freeze_check_kill, wait_for

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


def _parent_pid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


@pytest.mark.slow
def test_kill_9_of_one_of_two_worker_processes_loses_and_duplicates_nothing(stack: PipelineStack) -> None:
    # Given `catalogan worker --concurrency 2` (a supervisor and two worker processes), the reaper, and a job
    pool = stack.start("worker", "pool", CATALOGAN_WORKER_CONCURRENCY="2")
    stack.start("beat")
    job_id = stack.submit({"items": [{"category": "a", "count": 800}], "chunk_size": 50, "seed": 62})
    # When both processes hold chunks, one of them is SIGKILLed mid-chunk
    holders: set[str] = set()

    def both_busy() -> bool:
        holders.update(_leased_by(stack, job_id))
        return len(holders) >= 2

    wait_for(both_busy, timeout=90, what="two worker processes holding chunks")
    victim = next(
        int(holder.rsplit(":", 1)[1])
        for holder in _leased_by(stack, job_id) or sorted(holders)
        if _alive(int(holder.rsplit(":", 1)[1]))
    )
    assert _parent_pid(victim) == pool.process.pid, "the chunk holder is a child of the supervisor"
    # Frozen while the test checks that it still holds a chunk, so it cannot finish that chunk in between
    freeze_check_kill(
        victim, lambda: victim if any(h.endswith(f":{victim}") for h in _leased_by(stack, job_id)) else None
    )
    # Then the job completes with every image exactly once, the killed chunk was redone, and the supervisor
    # is still running and replaced its child
    stack.wait_terminal(job_id, timeout=180)
    assert_exactly_once(stack, job_id, 800)
    with stack.session_factory() as session:
        assert int(session.scalar(select(func.max(Chunk.attempt)).where(Chunk.job_id == job_id)) or 0) >= 2
    assert pool.process.poll() is None
    assert f"worker child {victim} exited with -9: restarting it" in pool.log()


def _alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()
