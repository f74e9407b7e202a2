"""The broker's delivery is at-least-once and untrusted: a duplicate message is a no-op, a pickle is refused."""

from __future__ import annotations

import pickle
import uuid
from pathlib import Path

from kombu import Connection, Exchange, Producer, Queue
from sqlalchemy import select

from db.messaging import BULK_QUEUE, GENERATE_CHUNK_TASK
from db.tables import Chunk
from tests.faults.checks import assert_exactly_once
from tests.pipeline import PipelineStack, wait_for


def test_every_message_delivered_twice_runs_each_chunk_once(stack: PipelineStack) -> None:
    # Given two workers
    # A long lease: this test is about duplicate messages, not about leases lost on a loaded box
    workers = [stack.start("worker", name, CATALOGAN_LEASE_SECONDS="30") for name in ("w1", "w2")]
    stack.start("beat")
    # When every chunk's message is published a second time right after the job's own publish
    job_id = stack.submit({"items": [{"category": "b", "count": 300}], "chunk_size": 50, "seed": 31})
    with stack.session_factory() as session:
        chunk_ids = list(session.scalars(select(Chunk.id).where(Chunk.job_id == job_id)).all())
    stack.publisher(BULK_QUEUE, chunk_ids)
    stack.wait_terminal(job_id)
    wait_for(
        lambda: sum(w.log().count("chunk not claimable") for w in workers) >= len(chunk_ids),
        timeout=60,
        what="the duplicate deliveries",
    )
    # Then each chunk was claimed once (attempt 1): the second delivery of each found it leased or finished
    with stack.session_factory() as session:
        attempts = session.scalars(select(Chunk.attempt).where(Chunk.job_id == job_id)).all()
    assert list(attempts) == [1] * len(chunk_ids)
    assert_exactly_once(stack, job_id, 300)


class _TouchOnLoad:
    """Unpickling this creates a file: proof that a worker deserialized a pickle."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.path), "w"))


def test_a_pickle_message_pushed_into_redis_is_refused(stack: PipelineStack, tmp_path: Path) -> None:
    # Given a running worker
    worker = stack.start("worker")
    wait_for(lambda: " ready." in worker.log(), timeout=120, what="the worker to be ready")
    marker = tmp_path / "unpickled-by-the-worker"
    # When a generate_chunk message with a pickle body (which would create a file when loaded) is pushed into
    # the bulk queue by hand
    body = pickle.dumps(((_TouchOnLoad(marker),), {}, {"callbacks": None, "errbacks": None, "chain": None}))
    headers = {"lang": "py", "task": GENERATE_CHUNK_TASK, "id": str(uuid.uuid4()), "retries": 0}
    exchange = Exchange(BULK_QUEUE, type="direct")
    with Connection(stack.redis_url) as connection:
        Producer(connection).publish(
            body,
            exchange=exchange,
            routing_key=BULK_QUEUE,
            headers=headers,
            content_type="application/x-python-serialize",
            content_encoding="binary",
            declare=[Queue(BULK_QUEUE, exchange, routing_key=BULK_QUEUE)],
        )
    # Then the worker refuses it without loading it, and still runs a real job exactly
    job_id = stack.submit({"items": [{"category": "c", "count": 60}], "chunk_size": 30, "seed": 32})
    stack.wait_terminal(job_id, timeout=120)
    refusal = "Refusing to deserialize untrusted content of type pickle"
    wait_for(lambda: refusal in worker.log(), timeout=30, what="the refusal in the worker's log")
    assert not marker.exists()
    assert "has been ignored and discarded" in worker.log()
    assert_exactly_once(stack, job_id, 60)
