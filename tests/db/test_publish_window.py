"""The per-tenant publish window (`db.publish_window`): a tenant has at most W chunks published and unfinished
per queue; the rest wait in SQL and go out as its chunks finish (the worker's refill) or when the reaper finds
room. PostgreSQL and SQLite (`session_factory` runs on both)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from db.engine import transaction
from db.planning import parse_job_spec, submit_job
from db.publish_window import in_flight, refill
from db.status import ChunkStatus
from db.tables import Chunk, Job
from scheduler.reaper import Reaper
from tests.pipeline import make_model_version, make_tenant

WINDOW = 2


class Broker:
    """Records what was published, in order."""

    def __init__(self) -> None:
        self.published: list[int] = []

    def __call__(self, queue: str, chunk_ids: Sequence[int]) -> None:
        self.published.extend(chunk_ids)


@pytest.fixture(autouse=True)
def small_window(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CATALOGAN_PUBLISH_WINDOW_CHUNKS", str(WINDOW))


def _submit(factory: sessionmaker[Session], tenant_id: str, broker: Broker, chunks: int) -> tuple[int, ...]:
    spec = parse_job_spec({"items": [{"category": "a", "count": 10 * chunks}], "chunk_size": 10, "seed": 1})
    model = make_model_version(factory, name=f"m{uuid.uuid4().hex[:6]}")
    return submit_job(factory, spec, tenant_id=tenant_id, model_version=model, publisher=broker).chunk_ids


def _finish(factory: sessionmaker[Session], chunk_ids: Sequence[int]) -> None:
    """As a worker's completion would leave them (the window counts chunk rows, not how they finished)."""
    with transaction(factory) as session:
        session.execute(update(Chunk).where(Chunk.id.in_(chunk_ids)).values(status=ChunkStatus.SUCCEEDED))


def test_a_large_job_publishes_its_window_and_another_tenant_is_not_behind_it(
    session_factory: sessionmaker[Session],
) -> None:
    # Given a window of 2 chunks per tenant
    broker = Broker()
    a, b = make_tenant(session_factory, "a"), make_tenant(session_factory, "b")
    # When tenant A submits 5 chunks, then only its first 2 are published
    a_chunks = _submit(session_factory, a, broker, 5)
    assert broker.published == list(a_chunks[:2])
    # And tenant B's job, submitted next, is published at once: behind 2 of A's chunks, not 5
    b_chunks = _submit(session_factory, b, broker, 1)
    assert broker.published == [*a_chunks[:2], *b_chunks]
    # And A's second job waits behind A's first (oldest first within a tenant)
    a_more = _submit(session_factory, a, broker, 1)
    assert broker.published == [*a_chunks[:2], *b_chunks]
    # When one of A's chunks finishes, the refill publishes A's next one, and only one
    _finish(session_factory, a_chunks[:1])
    assert refill(session_factory, broker, a, "bulk", window=WINDOW) == [a_chunks[2]]
    assert refill(session_factory, broker, a, "bulk", window=WINDOW) == []
    with session_factory() as session:
        assert in_flight(session, a, "bulk") == WINDOW
    # And A's first job goes on two at a time, then its second job's chunk follows
    _finish(session_factory, a_chunks[1:3])
    assert refill(session_factory, broker, a, "bulk", window=WINDOW) == list(a_chunks[3:])
    _finish(session_factory, a_chunks[3:])
    assert refill(session_factory, broker, a, "bulk", window=WINDOW) == list(a_more)
    assert broker.published == [*a_chunks[:2], *b_chunks, *a_chunks[2:], *a_more]


def test_the_reaper_fills_a_window_a_crash_left_short_and_skips_a_job_being_cancelled(
    session_factory: sessionmaker[Session],
) -> None:
    # Given tenant A's 4-chunk job (2 published, 2 held) and its 2 published chunks finished by a worker that
    # died before refilling
    broker = Broker()
    a = make_tenant(session_factory, "a")
    chunks = _submit(session_factory, a, broker, 4)
    _finish(session_factory, chunks[:2])
    reaper = Reaper(
        session_factory,
        publisher=broker,
        publish_finalize=lambda queue, job_id, superseding=(): None,
        queue_depth=lambda queue: 0,
        publish_window=WINDOW,
    )
    # When the reaper runs, then it publishes the two held chunks, once
    assert reaper.reap_once().refilled == list(chunks[2:])
    assert reaper.reap_once().refilled == []
    # And a held chunk of a job being cancelled is never published
    held = _submit(session_factory, a, broker, 3)
    with transaction(session_factory) as session:
        job_id = session.scalar(select(Chunk.job_id).where(Chunk.id == held[0]))
        session.execute(update(Job).where(Job.id == job_id).values(cancel_requested=True))
    _finish(session_factory, chunks[2:])
    report = reaper.reap_once()
    assert not set(report.refilled) & set(held)
    assert not set(broker.published) & set(held)


def test_a_refill_the_broker_refuses_returns_nothing_and_logs_one_line(
    session_factory: sessionmaker[Session], caplog: pytest.LogCaptureFixture
) -> None:
    """Given a tenant with a held chunk and a broker that refuses the send, when the window is refilled, then
    no id comes back (callers report what was sent: `dlq retry --json` listed the chunk as published), the
    chunk stays marked published for the reaper, and the failure is one log line without a traceback."""
    broker = Broker()
    a = make_tenant(session_factory, "a")
    chunks = _submit(session_factory, a, broker, 4)  # 2 published, 2 held
    _finish(session_factory, chunks[:1])

    def refusing(queue: str, chunk_ids: Sequence[int]) -> None:
        raise ConnectionRefusedError("[Errno 111] Connection refused\nsecond line of the broker's message")

    with caplog.at_level("DEBUG", logger="db.publish_window"):
        assert refill(session_factory, refusing, a, "bulk", window=WINDOW) == []
    with session_factory() as session:
        assert session.scalar(select(Chunk.enqueued_at).where(Chunk.id == chunks[2])) is not None
    shown = [record for record in caplog.records if record.levelname != "DEBUG"]
    assert [(record.levelname, record.exc_info) for record in shown] == [("WARNING", None)]
    assert shown[0].getMessage() == (
        f"publishing 1 chunks of tenant {a} failed (ConnectionRefusedError: [Errno 111] Connection refused); "
        "the reaper will publish them"
    )
    # A caller that reports the failure itself gets it instead of the log line
    failures: list[Exception] = []
    caplog.clear()
    _finish(session_factory, chunks[1:2])
    assert refill(session_factory, refusing, a, "bulk", window=WINDOW, on_send_failure=failures.append) == []
    assert [type(exc) for exc in failures] == [ConnectionRefusedError] and caplog.records == []
