"""Webhooks: Standard Webhooks signatures, the SSRF guard, events into the outbox, delivery with retries."""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from db.cli_support import ExitCode
from db.engine import transaction
from db.jobs import mark_job_running, transition_job
from db.status import DeliveryStatus, JobStatus
from db.tables import Job, Tenant, WebhookDelivery
from scheduler.cli.root import cli
from scheduler.client import verify_webhook
from scheduler.errors import UnsafeWebhookTargetError, WebhookVerificationError
from scheduler.settings import WebhookSettings
from scheduler.signatures import new_secret, sign, signed_headers, verify
from scheduler.webhooks import check_target, dispatch_due, emit_job_events, run_webhook_tick
from tests.scheduler.conftest import Credentials
from tests.scheduler.receivers import Receiver

ALLOW = WebhookSettings(webhook_allow_private_targets=True, webhook_backoff_base_seconds=0.01)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A webhook receiver on loopback."""
    server = Receiver().start()
    yield server
    server.stop()


# --- signatures ------------------------------------------------------------------------------------------


def test_a_signed_body_verifies_and_a_tampered_one_does_not() -> None:
    """Given a signed body, when verified, then it passes; a changed byte or another secret fails."""
    secret = new_secret()
    body = b'{"type":"job.completed"}'
    headers = signed_headers(secret, "msg_1", body)
    assert verify_webhook(headers, body, secret) == {"type": "job.completed"}
    with pytest.raises(WebhookVerificationError):
        verify_webhook(headers, body.replace(b"completed", b"failed"), secret)
    with pytest.raises(WebhookVerificationError):
        verify_webhook(headers, body, new_secret())


def test_a_stale_or_future_timestamp_fails_verification() -> None:
    """Given a correctly signed delivery stamped 10 minutes ago (or ahead), when verified, then it fails."""
    secret = new_secret()
    body = b"{}"
    for offset in (-600, 600):
        headers = signed_headers(secret, "msg_2", body, timestamp=int(time.time()) + offset)
        with pytest.raises(WebhookVerificationError, match="tolerance"):
            verify_webhook(headers, body, secret)


@pytest.mark.parametrize(
    ("header", "value"),
    [
        ("webhook-signature", "v1,\u00e9t\u00e9"),  # non-ASCII: hmac.compare_digest raised TypeError on str
        ("webhook-signature", "v1,\udc80"),  # a lone surrogate
        ("webhook-timestamp", "1" + "0" * 400),  # an int too large for float arithmetic: OverflowError
        ("webhook-timestamp", "\uff11\uff12\uff13"),  # fullwidth digits, which int() accepts
        ("webhook-timestamp", "-1"),
    ],
)
def test_a_hostile_header_is_a_verification_error_not_a_crash(header: str, value: str) -> None:
    """Given a signed delivery whose signature or timestamp header a forger replaced with text a receiver's
    framework may pass through (non-ASCII, huge or non-ASCII-digit numbers), when verified, then it is a
    `WebhookVerificationError` (a 401 for the receiver), not another exception (a 500)."""
    secret = new_secret()
    headers = {**signed_headers(secret, "msg_h", b"{}"), header: value}
    with pytest.raises(WebhookVerificationError):
        verify_webhook(headers, b"{}", secret)


def test_the_signature_matches_the_standard_webhooks_reference_vector() -> None:
    """Given the Standard Webhooks spec's example, when signed, then the published signature comes out."""
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    body = b'{"test": 2432232314}'
    assert sign(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body) == (
        "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    )
    verify(
        {
            "Webhook-Id": "msg_p5jXN8AQM9LWM0D4loKWxJek",
            "Webhook-Timestamp": "1614265330",
            "Webhook-Signature": "v1,bm9ldHUjKzFob2VudXRob2VodWUzMjRvdWVvdW9ldQo= v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
        },
        body,
        secret,
        now=1614265330,
    )


# --- SSRF guard ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/hook",
        "http://localhost:8080/hook",
        "http://[::1]/hook",
        "http://10.1.2.3/hook",
        "http://192.168.0.10/hook",
        "http://172.16.0.1/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://[fe80::1]/hook",
        "http://0.0.0.0/hook",
        "http://[::ffff:127.0.0.1]/hook",
        "http://[2002:7f00:1::1]/hook",  # 6to4 of 127.0.0.1
        "http://[2002:a9fe:a9fe::1]/hook",  # 6to4 of 169.254.169.254 (cloud metadata)
        "http://[64:ff9b::a00:1]/hook",  # NAT64 of 10.0.0.1
        "http://[64:ff9b:1::7f00:1]/hook",  # local-use NAT64 of 127.0.0.1
    ],
)
def test_loopback_private_and_link_local_targets_are_refused(url: str) -> None:
    """Given an internal address, when checked without the operator setting, then it is refused."""
    with pytest.raises(UnsafeWebhookTargetError):
        check_target(url, allow_private=False)


@pytest.mark.parametrize("url", ["http://[/hook", "https://hooks.example]/x"])
def test_a_webhook_url_that_is_not_a_url_is_refused_not_a_crash(url: str) -> None:
    """Given a webhook_url urllib cannot split (an unbalanced bracket in the host), when checked, then it is
    refused as an unsafe target naming webhook_url (a 422 at submit), not a ValueError (a 500)."""
    with pytest.raises(UnsafeWebhookTargetError, match=r"webhook_url .*not a URL"):
        check_target(url, allow_private=False)


def test_a_name_resolving_to_a_private_address_is_refused() -> None:
    """Given a public-looking name that resolves to 10.0.0.5 (DNS rebinding), when checked, then refused."""
    with pytest.raises(UnsafeWebhookTargetError, match=r"10\.0\.0\.5"):
        check_target(
            "https://hooks.example.com/x", allow_private=False, resolver=lambda host, port: ["10.0.0.5"]
        )


def test_public_targets_pass_and_the_operator_setting_allows_loopback() -> None:
    check_target("https://[2002:5db8:d822::1]/hook", allow_private=False)  # 6to4 of public 93.184.216.34
    """Given a public address, or loopback with the setting on, when checked, then it passes."""
    check_target(
        "https://hooks.example.com/x", allow_private=False, resolver=lambda host, port: ["93.184.216.34"]
    )
    check_target("http://127.0.0.1:9/hook", allow_private=True)
    for bad in ("ftp://example.com/x", "http:///nohost", "http://user:pw@example.com/"):
        with pytest.raises(UnsafeWebhookTargetError):
            check_target(bad, allow_private=True)


def test_production_refuses_the_private_targets_setting() -> None:
    """Given environment=production, when private targets are allowed, then the settings refuse to load."""
    from db.errors import ConfigError

    with pytest.raises(ConfigError):
        WebhookSettings(environment="production", webhook_allow_private_targets=True)


def test_the_api_refuses_a_loopback_webhook_without_the_setting(
    make_api: Callable[..., TestClient], model_version: object, tenant: Credentials
) -> None:
    """Given the default webhook settings, when a job names a loopback webhook_url, then 422 names it."""
    api = make_api(webhooks=WebhookSettings())
    body = {"items": [{"category": "a", "count": 1}], "webhook_url": "http://127.0.0.1:9/hook"}
    response = api.post("/v1/jobs", json=body, headers=tenant.headers)
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "webhook_url"


# --- outbox ----------------------------------------------------------------------------------------------


def _job(api: TestClient, tenant: Credentials, url: str) -> str:
    body = {"items": [{"category": "a", "count": 4}], "webhook_url": url}
    response = api.post("/v1/jobs", json=body, headers=tenant.headers)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def _events(factory: sessionmaker[Session], job_id: str) -> list[str]:
    with factory() as session:
        return list(
            session.scalars(
                select(WebhookDelivery.event)
                .where(WebhookDelivery.job_id == job_id)
                .order_by(WebhookDelivery.created_at, WebhookDelivery.event)
            )
        )


def test_job_events_are_written_once_each_and_progress_is_throttled(
    api: TestClient, tenant: Credentials, pg_factory: sessionmaker[Session], receiver: Receiver
) -> None:
    """Given a job that starts, progresses and succeeds, when ticks run, then started, one progress per
    interval and one completed event are written — never twice."""
    job_id = _job(api, tenant, receiver.url)
    settings = WebhookSettings(webhook_allow_private_targets=True, webhook_progress_interval_seconds=30)
    t0 = dt.datetime.now(dt.UTC)
    with transaction(pg_factory) as session:
        emit_job_events(session, settings, now=t0)  # queued: nothing yet
        mark_job_running(session, job_id)
        emit_job_events(session, settings, now=t0)
        session.execute(update(Job).where(Job.id == job_id).values(images_done=2))
        emit_job_events(session, settings, now=t0 + dt.timedelta(seconds=5))  # too soon
        emit_job_events(session, settings, now=t0 + dt.timedelta(seconds=31))
        emit_job_events(session, settings, now=t0 + dt.timedelta(seconds=70))  # counts did not move
        session.execute(update(Job).where(Job.id == job_id).values(images_done=4))
        transition_job(session, job_id, JobStatus.SUCCEEDED)
        emit_job_events(session, settings, now=t0 + dt.timedelta(seconds=80))
        emit_job_events(session, settings, now=t0 + dt.timedelta(seconds=90))
    assert _events(pg_factory, job_id) == ["job.started", "job.progress", "job.completed"]


def test_deliveries_are_signed_and_retried_with_backoff_until_accepted(
    api: TestClient, tenant: Credentials, pg_factory: sessionmaker[Session], receiver: Receiver
) -> None:
    """Given a receiver that answers 500 twice, when the dispatcher runs, then the third attempt is delivered
    with the same webhook-id, and every delivery verifies with the tenant's secret."""
    job_id = _job(api, tenant, receiver.url)
    with transaction(pg_factory) as session:
        mark_job_running(session, job_id)
    receiver.statuses = [500, 500]
    reports = []
    for _ in range(30):
        reports.append(run_webhook_tick(pg_factory, ALLOW))
        if reports[-1].delivered:
            break
        time.sleep(0.05)
    assert [r.retrying for r in reports if r.retrying] == [1, 1]
    assert len(receiver.deliveries) == 3
    assert len({d.headers["webhook-id"] for d in receiver.deliveries}) == 1
    for delivery in receiver.deliveries:
        payload = verify_webhook(delivery.headers, delivery.body, tenant.webhook_secret)
        assert payload["type"] == "job.started" and payload["data"]["job_id"] == job_id
    with pg_factory() as session:
        row = session.scalars(select(WebhookDelivery).where(WebhookDelivery.job_id == job_id)).one()
        assert row.status is DeliveryStatus.DELIVERED and row.attempts == 3


def test_a_delivery_gives_up_after_the_max_attempts(
    api: TestClient, tenant: Credentials, pg_factory: sessionmaker[Session], receiver: Receiver
) -> None:
    """Given a receiver that always fails, when the attempts run out, then the row is failed with the error."""
    job_id = _job(api, tenant, receiver.url)
    with transaction(pg_factory) as session:
        mark_job_running(session, job_id)
    receiver.statuses = [503] * 10
    settings = WebhookSettings(
        webhook_allow_private_targets=True, webhook_max_attempts=2, webhook_backoff_base_seconds=0.01
    )
    for _ in range(20):
        run_webhook_tick(pg_factory, settings)
        time.sleep(0.03)
    with pg_factory() as session:
        row = session.scalars(select(WebhookDelivery).where(WebhookDelivery.job_id == job_id)).one()
    assert row.status is DeliveryStatus.FAILED and row.attempts == 2 and "503" in (row.last_error or "")


def test_the_dispatcher_refuses_a_target_that_became_private(
    api: TestClient, tenant: Credentials, pg_factory: sessionmaker[Session], receiver: Receiver
) -> None:
    """Given an outbox row for a loopback URL, when the dispatcher runs without the setting, then nothing is
    sent and the row fails at once."""
    job_id = _job(api, tenant, receiver.url)  # accepted: the API here allows private targets
    with transaction(pg_factory) as session:
        mark_job_running(session, job_id)
        emit_job_events(session, ALLOW)
    report = dispatch_due(pg_factory, WebhookSettings())
    assert report.failed == 1 and receiver.deliveries == []


def test_finalize_rows_are_normalised_to_the_standard_envelope(
    api: TestClient, tenant: Credentials, pg_factory: sessionmaker[Session], receiver: Receiver
) -> None:
    """Given an outbox row as the workers' finalize step writes it (`job.succeeded`, flat payload), when
    delivered, then the receiver sees `job.completed` in the {type, timestamp, data} envelope."""
    job_id = _job(api, tenant, receiver.url)
    with transaction(pg_factory) as session:
        session.add(
            WebhookDelivery(
                id="f" * 32,
                tenant_id=tenant.tenant_id,
                job_id=job_id,
                event="job.succeeded",
                url=receiver.url,
                payload={"event": "job.succeeded", "job_id": job_id, "status": "succeeded"},
            )
        )
    dispatch_due(pg_factory, ALLOW)
    body = json.loads(receiver.deliveries[0].body)
    assert body["type"] == "job.completed" and body["data"] == {"job_id": job_id, "status": "succeeded"}


def _refused_first_attempt(
    api: TestClient,
    tenant: Credentials,
    pg_factory: sessionmaker[Session],
    receiver: Receiver,
    *,
    refusals: int,
) -> str:
    """A running job whose first webhook attempt (signed with the tenant's secret) the receiver refused; it
    refuses `refusals` attempts in all. Returns the job id."""
    job_id = _job(api, tenant, receiver.url)
    with transaction(pg_factory) as session:
        mark_job_running(session, job_id)
    receiver.statuses = [500] * refusals
    assert run_webhook_tick(pg_factory, ALLOW).retrying == 1
    return job_id


def test_a_rotated_secret_signs_every_attempt_after_the_rotation(
    api: TestClient,
    tenant: Credentials,
    pg_url: str,
    pg_factory: sessionmaker[Session],
    receiver: Receiver,
    tmp_path: Path,
) -> None:
    """Given an event whose first attempt (signed with the old secret) the receiver refused, when the operator
    runs `catalogan tenants rotate-webhook-secret acme --grace-hours 0` (a leaked secret), then the new secret is
    printed once and the retry is signed with it alone: it verifies with the new secret and not with the old
    one; an unknown tenant is exit 3."""
    job_id = _refused_first_attempt(api, tenant, pg_factory, receiver, refusals=1)
    verify_webhook(receiver.deliveries[0].headers, receiver.deliveries[0].body, tenant.webhook_secret)

    env = {"CATALOGAN_DATABASE_URL": pg_url, "CATALOGAN_DATA_DIR": str(tmp_path / "data")}
    rotated = CliRunner().invoke(
        cli, ["tenants", "rotate-webhook-secret", "acme", "--grace-hours", "0", "--json"], env=env
    )
    assert rotated.exit_code == 0, rotated.output
    assert json.loads(rotated.output)["previous_secret_signs_until"] is None
    new = json.loads(rotated.output)["webhook_secret"]
    assert new.startswith("whsec_") and new != tenant.webhook_secret

    for _ in range(30):
        if run_webhook_tick(pg_factory, ALLOW).delivered:
            break
        time.sleep(0.05)
    retry = receiver.deliveries[1]
    assert retry.headers["webhook-id"] == receiver.deliveries[0].headers["webhook-id"]
    assert verify_webhook(retry.headers, retry.body, new)["data"]["job_id"] == job_id
    with pytest.raises(WebhookVerificationError):
        verify_webhook(retry.headers, retry.body, tenant.webhook_secret)

    missing = CliRunner().invoke(cli, ["tenants", "rotate-webhook-secret", "nope"], env=env)
    assert missing.exit_code == ExitCode.NOT_FOUND and len(missing.output.strip().splitlines()) == 1


def test_a_rotated_secret_keeps_signing_next_to_the_new_one_for_its_grace_period(
    api: TestClient,
    tenant: Credentials,
    pg_url: str,
    pg_factory: sessionmaker[Session],
    receiver: Receiver,
    tmp_path: Path,
) -> None:
    """Given a refused first attempt, when the operator rotates the secret with the default grace period, then
    each retry carries two signatures and verifies with the new secret and with the old one (a receiver can
    switch over without refusing deliveries); once the grace period is over, only the new one signs. A grace
    period over a week is a usage error that changes nothing."""
    job_id = _refused_first_attempt(api, tenant, pg_factory, receiver, refusals=2)
    env = {"CATALOGAN_DATABASE_URL": pg_url, "CATALOGAN_DATA_DIR": str(tmp_path / "data")}
    too_long = CliRunner().invoke(
        cli, ["tenants", "rotate-webhook-secret", "acme", "--grace-hours", "169"], env=env
    )
    assert too_long.exit_code == ExitCode.USAGE and "--grace-hours" in too_long.output
    with pg_factory() as session:
        assert (
            session.scalars(select(Tenant.webhook_secret).where(Tenant.name == "acme")).one()
            == tenant.webhook_secret
        )
    rotated = CliRunner().invoke(cli, ["tenants", "rotate-webhook-secret", "acme", "--json"], env=env)
    assert rotated.exit_code == 0, rotated.output
    answer = json.loads(rotated.output)
    new, until = answer["webhook_secret"], dt.datetime.fromisoformat(answer["previous_secret_signs_until"])
    assert dt.timedelta(hours=23.9) < until - dt.datetime.now(dt.UTC) <= dt.timedelta(hours=24)

    def next_attempt() -> Any:
        with transaction(pg_factory) as session:  # due now
            session.execute(update(WebhookDelivery).values(next_attempt_at=dt.datetime.now(dt.UTC)))
        seen = len(receiver.deliveries)
        for _ in range(30):
            run_webhook_tick(pg_factory, ALLOW)
            if len(receiver.deliveries) > seen:
                return receiver.deliveries[-1]
            time.sleep(0.05)
        raise AssertionError("no new attempt")

    during = next_attempt()
    assert len(during.headers["webhook-signature"].split()) == 2
    for secret in (new, tenant.webhook_secret):
        assert verify_webhook(during.headers, during.body, secret)["data"]["job_id"] == job_id
    # When the grace period is over
    with transaction(pg_factory) as session:
        session.execute(
            update(Tenant)
            .where(Tenant.name == "acme")
            .values(previous_webhook_secret_until=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1))
        )
    after = next_attempt()
    assert len(after.headers["webhook-signature"].split()) == 1
    assert verify_webhook(after.headers, after.body, new)["data"]["job_id"] == job_id
    with pytest.raises(WebhookVerificationError):
        verify_webhook(after.headers, after.body, tenant.webhook_secret)
