"""A job's `queue` (its priority, within the tenant's allowance) and its `webhook_events` filter, over the API on
real PostgreSQL and Redis: where the chunk messages land, what the 422s name, what the outbox holds."""

from __future__ import annotations

import base64
import datetime as dt
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from click.testing import CliRunner
from fastapi.testclient import TestClient
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from db.engine import transaction
from db.job_specs import parse_job_spec, request_sha256
from db.jobs import mark_job_running, transition_job
from db.messaging import GENERATE_CHUNK_TASK
from db.settings import BrokerSettings, DataSettings, StorageSettings
from db.status import JobStatus
from db.storage import MemoryStore
from db.tables import Chunk, Job, WebhookDelivery
from scheduler.api.app import build_services, create_app
from scheduler.api.limits import MemoryRateLimiter
from scheduler.cli.root import cli
from scheduler.client import Client
from scheduler.settings import ApiSettings, WebhookSettings
from scheduler.webhooks import EVENTS, dispatch_due, emit_job_events, enqueue_job_reviewed
from tests.scheduler.conftest import Credentials, LiveServer, _app
from tests.scheduler.receivers import Receiver
from workers.finalize import _enqueue_webhook

ITEMS = [{"category": "a", "count": 40}]
ALLOW = WebhookSettings(webhook_allow_private_targets=True, webhook_progress_interval_seconds=30)


@pytest.fixture
def redis_api(
    pg_factory: sessionmaker[Session], redis_url: str, model_version: Any, tmp_path: Path
) -> Iterator[TestClient]:
    """The app publishing through the real Celery publisher to this test's Redis database."""
    settings = ApiSettings()
    services = build_services(
        settings,
        webhooks=ALLOW,
        broker=BrokerSettings(broker_url=redis_url),
        data=DataSettings(data_dir=tmp_path / "data"),
        storage=StorageSettings(storage_url="memory://"),
        session_factory=pg_factory,
        store=MemoryStore(),
        rate_limiter=MemoryRateLimiter(),
    )
    with TestClient(create_app(settings, services=services), raise_server_exceptions=False) as client:
        yield client


def queued_chunk_ids(redis_url: str, queue: str) -> list[int]:
    """The chunk ids of the generate-chunk messages waiting in a Redis queue (kombu keeps one list per queue)."""
    client = redis.Redis.from_url(redis_url)
    ids = []
    for raw in client.lrange(queue, 0, -1):
        message = json.loads(raw)
        assert message["headers"]["task"] == GENERATE_CHUNK_TASK
        args, _kwargs, _embed = json.loads(base64.b64decode(message["body"]))
        ids.extend(args)
    return sorted(ids)


def job_count(factory: sessionmaker[Session]) -> int:
    with factory() as session:
        return int(session.scalar(select(func.count()).select_from(Job)) or 0)


def test_an_interactive_job_lands_in_the_interactive_queue_and_a_default_one_in_bulk(
    redis_api: TestClient,
    make_tenant: Callable[..., Credentials],
    redis_url: str,
    pg_factory: sessionmaker[Session],
) -> None:
    """Given a tenant allowed `interactive`, when it submits one job with queue interactive and one without,
    then the first job's chunk messages wait in Redis list `interactive` (chunks of 32), the other's in `bulk`
    (chunks of 256), and each job reports its queue."""
    tenant = make_tenant(highest_queue="interactive")
    fast = redis_api.post("/v1/jobs", json={"items": ITEMS, "queue": "interactive"}, headers=tenant.headers)
    plain = redis_api.post("/v1/jobs", json={"items": ITEMS}, headers=tenant.headers)
    assert fast.status_code == 201 and plain.status_code == 201, (fast.text, plain.text)
    assert (fast.json()["queue"], fast.json()["chunk_size"]) == ("interactive", 32)
    assert (plain.json()["queue"], plain.json()["chunk_size"]) == ("bulk", 256)

    def chunk_ids(job_id: str) -> list[int]:
        with pg_factory() as session:
            return sorted(session.scalars(select(Chunk.id).where(Chunk.job_id == job_id)))

    # 40 images: two chunks of 32 in `interactive`, one chunk of 256 in `bulk`, nothing in `backfill`.
    assert (
        queued_chunk_ids(redis_url, "interactive") == chunk_ids(fast.json()["id"])
        and len(chunk_ids(fast.json()["id"])) == 2
    )
    assert queued_chunk_ids(redis_url, "bulk") == chunk_ids(plain.json()["id"])
    assert queued_chunk_ids(redis_url, "backfill") == []


@pytest.mark.parametrize(
    ("allowance", "asked"), [("bulk", "interactive"), ("backfill", "bulk"), ("backfill", "interactive")]
)
def test_a_queue_above_the_allowance_is_a_422_naming_queue_and_creates_nothing(
    api: TestClient,
    make_tenant: Callable[..., Credentials],
    published: list[Any],
    pg_factory: sessionmaker[Session],
    allowance: str,
    asked: str,
) -> None:
    """Given a tenant whose highest queue is `allowance`, when it asks for a higher one, then the 422 names
    `queue` and rule `queue_allowance`, no job exists and nothing was published."""
    tenant = make_tenant(highest_queue=allowance)
    response = api.post("/v1/jobs", json={"items": ITEMS, "queue": asked}, headers=tenant.headers)
    assert response.status_code == 422, response.text
    error = response.json()["errors"][0]
    assert (error["field"], error["rule"]) == ("queue", "queue_allowance")
    assert repr(asked) in error["message"] and repr(allowance) in error["message"]
    assert job_count(pg_factory) == 0 and published == []


def test_a_queue_at_or_below_the_allowance_is_accepted(
    api: TestClient, make_tenant: Callable[..., Credentials], published: list[Any]
) -> None:
    """Given a tenant with the default allowance (bulk), when it asks for bulk or backfill, then both jobs are
    created and their chunks published to the queue asked for."""
    tenant = make_tenant()
    for queue in ("bulk", "backfill"):
        response = api.post("/v1/jobs", json={"items": ITEMS, "queue": queue}, headers=tenant.headers)
        assert response.status_code == 201, response.text
        assert response.json()["queue"] == queue
    assert [queue for queue, _ in published] == ["bulk", "backfill"]


def test_the_operator_raises_and_lowers_the_allowance_with_the_cli(
    api: TestClient, pg_url: str, tmp_path: Path
) -> None:
    """Given a tenant made by `tenants create` (allowance bulk), when the operator runs `tenants set
    --highest-queue interactive`, then `tenants ls` shows it and an interactive job is accepted; lowered to
    backfill, a bulk job is a 422; an unknown queue is a usage error (exit 2) naming the option."""
    env = {"CATALOGAN_DATABASE_URL": pg_url, "CATALOGAN_DATA_DIR": str(tmp_path / "data")}

    def run(*args: str) -> Any:
        return CliRunner().invoke(cli, list(args), env=env, prog_name="catalogan")

    created = json.loads(run("tenants", "create", "acme", "--with-key", "--json").output)
    headers = {"Authorization": f"Bearer {created['api_key']}"}
    body = {"items": ITEMS, "queue": "interactive"}
    assert api.post("/v1/jobs", json=body, headers=headers).status_code == 422

    raised = run("tenants", "set", "acme", "--highest-queue", "interactive")
    assert raised.exit_code == 0 and "highest_queue=interactive" in raised.output, raised.output
    listed = json.loads(run("tenants", "ls", "--json").output)
    assert [(t["name"], t["highest_queue"]) for t in listed] == [("acme", "interactive")]
    assert api.post("/v1/jobs", json=body, headers=headers).status_code == 201

    assert run("tenants", "set", "acme", "--highest-queue", "backfill").exit_code == 0
    lowered = api.post("/v1/jobs", json={"items": ITEMS, "queue": "bulk"}, headers=headers)
    assert lowered.status_code == 422 and lowered.json()["errors"][0]["field"] == "queue"

    unknown = run("tenants", "set", "acme", "--highest-queue", "urgent")
    assert unknown.exit_code == 2 and "--highest-queue" in unknown.output


def test_the_request_hash_is_unchanged_without_the_new_fields() -> None:
    """Given a request without queue or webhook_events, when hashed, then the hash is the one from before both
    fields existed (pinned: job ids of `catalogan generate` derive from it); naming them changes it, the
    events' order does not."""
    body = {
        "model": "fashion-cgan",
        "items": [{"category": "sneaker", "count": 4, "sku": "SKU-1"}],
        "seed": 7,
    }
    assert request_sha256(parse_job_spec(body)) == (
        "4a0b059adf1abd4932817c99b68c9b98dd831c77afa8ec8c5083b3f7cdf79ca2"
    )
    plain = request_sha256(parse_job_spec(body))
    assert request_sha256(parse_job_spec({**body, "queue": "bulk"})) == plain  # bulk is the default
    assert request_sha256(parse_job_spec({**body, "queue": "interactive"})) != plain
    events = ["job.failed", "job.completed"]
    with_events = request_sha256(parse_job_spec({**body, "webhook_events": events}))
    assert with_events != plain
    assert request_sha256(parse_job_spec({**body, "webhook_events": events[::-1]})) == with_events
    assert request_sha256(parse_job_spec({**body, "webhook_events": []})) not in (plain, with_events)


# --- webhook event filter -----------------------------------------------------------------------------------


def _submit(api: TestClient, tenant: Credentials, url: str, events: list[str] | None) -> str:
    body: dict[str, Any] = {"items": [{"category": "a", "count": 4}], "webhook_url": url}
    if events is not None:
        body["webhook_events"] = events
    response = api.post("/v1/jobs", json=body, headers=tenant.headers)
    assert response.status_code == 201, response.text
    assert response.json()["webhook_events"] == events
    return str(response.json()["id"])


def _run_to_success(factory: sessionmaker[Session], job_ids: list[str]) -> None:
    """Start, progress and finish the jobs, with a beat tick after each step (as `catalogan beat` would)."""
    t0 = dt.datetime.now(dt.UTC)
    with transaction(factory) as session:
        for job_id in job_ids:
            mark_job_running(session, job_id)
        emit_job_events(session, ALLOW, now=t0)
        session.execute(update(Job).where(Job.id.in_(job_ids)).values(images_done=2))
        emit_job_events(session, ALLOW, now=t0 + dt.timedelta(seconds=31))
        session.execute(update(Job).where(Job.id.in_(job_ids)).values(images_done=4))
        for job_id in job_ids:
            transition_job(session, job_id, JobStatus.SUCCEEDED)
        emit_job_events(session, ALLOW, now=t0 + dt.timedelta(seconds=40))


def _events(factory: sessionmaker[Session], job_id: str) -> list[str]:
    with factory() as session:
        return list(
            session.scalars(
                select(WebhookDelivery.event)
                .where(WebhookDelivery.job_id == job_id)
                .order_by(WebhookDelivery.created_at)
            )
        )


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A webhook receiver on loopback."""
    server = Receiver().start()
    yield server
    server.stop()


def test_a_job_subscribed_to_one_event_gets_only_that_row_and_post(
    api: TestClient, tenant: Credentials, pg_factory: sessionmaker[Session], receiver: Receiver
) -> None:
    """Given a job subscribed only to job.completed and one without a filter, when both start, progress and
    succeed, then the filtered job has one outbox row and the receiver one POST for it (job.completed); the
    other gets started, progress and completed; a job subscribed to [] gets nothing."""
    only = _submit(api, tenant, receiver.url, ["job.completed"])
    every = _submit(api, tenant, receiver.url, None)
    none = _submit(api, tenant, receiver.url, [])
    _run_to_success(pg_factory, [only, every, none])

    assert _events(pg_factory, only) == ["job.completed"]
    assert _events(pg_factory, every) == ["job.started", "job.progress", "job.completed"]
    assert _events(pg_factory, none) == []
    later = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5)  # the ticks above wrote rows up to 40 s ahead
    while dispatch_due(pg_factory, ALLOW, now=later).delivered:
        pass
    posted = [json.loads(delivery.body) for delivery in receiver.deliveries]
    assert sorted(
        (body["data"]["job_id"], body["type"]) for body in posted if body["data"]["job_id"] == only
    ) == [(only, "job.completed")]
    assert len(posted) == 4


def test_progress_without_started_still_comes_an_interval_after_the_start(
    api: TestClient, tenant: Credentials, pg_factory: sessionmaker[Session], receiver: Receiver
) -> None:
    """Given a job subscribed to job.progress only, when its counts move past the interval, then one
    job.progress row is written (the start itself, not a job.started row, sets the interval)."""
    job_id = _submit(api, tenant, receiver.url, ["job.progress"])
    _run_to_success(pg_factory, [job_id])
    assert _events(pg_factory, job_id) == ["job.progress"]


def test_the_finalize_and_review_writers_follow_the_filter(
    api: TestClient, tenant: Credentials, pg_factory: sessionmaker[Session], receiver: Receiver
) -> None:
    """Given a job subscribed to job.failed only, when it succeeds through the worker's finalize step and all
    its images get reviewed, then neither writes a row; an unfiltered job gets both."""
    filtered = _submit(api, tenant, receiver.url, ["job.failed"])
    every = _submit(api, tenant, receiver.url, None)
    with transaction(pg_factory) as session:
        for job_id in (filtered, every):
            mark_job_running(session, job_id)
            transition_job(session, job_id, JobStatus.SUCCEEDED)
            job = session.get_one(Job, job_id)
            _enqueue_webhook(session, job)
            enqueue_job_reviewed(session, job, {"approved": 4, "rejected": 0})
    assert _events(pg_factory, filtered) == []
    assert sorted(_events(pg_factory, every)) == ["job.reviewed", "job.succeeded"]


@pytest.mark.parametrize(
    ("events", "field", "rule"),
    [
        (["job.done"], "webhook_events.0", "literal_error"),
        (["job.completed", "job.succeeded"], "webhook_events.1", "literal_error"),
        (["job.failed", "job.failed"], "webhook_events", "unique_events"),
        ("job.failed", "webhook_events", "list_type"),
        ([*EVENTS, "job.failed"], "webhook_events", "too_long"),
    ],
)
def test_a_bad_event_filter_is_a_422_naming_the_field_and_creates_nothing(
    api: TestClient,
    tenant: Credentials,
    pg_factory: sessionmaker[Session],
    events: Any,
    field: str,
    rule: str,
) -> None:
    """Given an unknown event name, a duplicate, a string or too many, when submitting, then the 422 names
    `webhook_events` (and the entry) with the rule, and no job exists."""
    body = {"items": ITEMS, "webhook_events": events}
    response = api.post("/v1/jobs", json=body, headers=tenant.headers)
    assert response.status_code == 422, response.text
    errors = [(error["field"], error["rule"]) for error in response.json()["errors"]]
    assert (field, rule) in errors, errors
    assert job_count(pg_factory) == 0


def test_the_document_lists_the_queues_and_the_webhook_events_a_job_may_choose(api: TestClient) -> None:
    """Given the OpenAPI document, when JobCreate is read, then `webhook_events` lists exactly the event types
    of its `webhooks` section (unique, at most all of them) and `queue` the three queues."""
    document = api.get("/openapi.json").json()
    fields = document["components"]["schemas"]["JobCreate"]["properties"]
    events = next(option for option in fields["webhook_events"]["anyOf"] if option.get("type") == "array")
    assert sorted(events["items"]["enum"]) == sorted(document["webhooks"]) == sorted(EVENTS)
    assert events["uniqueItems"] is True and events["maxItems"] == len(EVENTS)
    queue = next(option for option in fields["queue"]["anyOf"] if option.get("type") == "string")
    assert queue["enum"] == ["interactive", "bulk", "backfill"]


def test_the_sdk_and_the_jobs_cli_send_queue_and_events(
    pg_url: str,
    pg_factory: sessionmaker[Session],
    model_version: object,
    tmp_path: Path,
    live_server_factory: Callable[[Any], LiveServer],
) -> None:
    """Given a live API and a tenant allowed `interactive`, when the SDK and `catalogan jobs submit` submit
    with a queue and event filter, then the jobs carry both and their chunks went to that queue; above the
    allowance the CLI exits 2 with one line naming `queue`."""
    published: list[tuple[str, tuple[int, ...]]] = []
    env = {"CATALOGAN_DATABASE_URL": pg_url, "CATALOGAN_DATA_DIR": str(tmp_path / "data")}
    runner = CliRunner()
    created = json.loads(
        runner.invoke(cli, ["tenants", "create", "acme", "--with-key", "--json"], env=env).output
    )
    server = live_server_factory(_app(pg_factory, MemoryStore(), published, tmp_path, ApiSettings(), ALLOW))
    env |= {"CATALOGAN_API_URL": server.url, "CATALOGAN_API_KEY": created["api_key"]}
    submit = ["jobs", "submit", "--category", "a=2", "--queue", "interactive", "--json"]
    refused = runner.invoke(cli, submit, env=env, prog_name="catalogan")
    assert refused.exit_code == 2 and "queue" in refused.output, refused.output

    runner.invoke(cli, ["tenants", "set", "acme", "--highest-queue", "interactive"], env=env)
    events = ["--webhook-event", "job.failed", "--webhook-event", "job.completed"]
    shown = runner.invoke(cli, [*submit, *events], env=env, prog_name="catalogan")
    assert shown.exit_code == 0, shown.output
    assert (json.loads(shown.output)["queue"], json.loads(shown.output)["webhook_events"]) == (
        "interactive",
        ["job.failed", "job.completed"],
    )
    with Client(server.url, created["api_key"]) as client:
        job = client.submit_job([{"category": "b", "count": 2}], queue="backfill", webhook_events=[])
        assert (job.queue, job.webhook_events) == ("backfill", [])
        assert client.get_job(job.id).queue == "backfill"
    assert [queue for queue, _ in published] == ["interactive", "backfill"]
