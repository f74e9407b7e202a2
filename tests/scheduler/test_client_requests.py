"""What the SDK makes of the API's answers: a retry or delete whose first answer was lost, a success that is not
the API's JSON, a problem listing a thousand fields, and an estimate with everything the API returns.

Lost answers and foreign pages: a scripted `httpx.MockTransport`. The 422 and the estimate: the real app on
PostgreSQL (FastAPI's TestClient transport under the SDK).
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from db.cli_support import ExitCode, exit_code_for
from scheduler.client import Client, NotCataloganApiError
from scheduler.errors import ApiError, ClientError
from tests.scheduler.conftest import Credentials

JOB = {
    "id": "j1",
    "status": "completed_with_failures",
    "model": {"name": "tiny", "version": 1},
    "seed": 1,
    "counts": {"images_total": 8, "images_done": 6, "images_failed": 2},
}
NOTHING_TO_RETRY = {"status": 409, "detail": "job j1 has no failed images to retry"}
NOT_FOUND = {"status": 404, "detail": "job 'j1' not found"}


class JobApi:
    """A job `j1` behind `POST /retry`, `DELETE` and `GET`: the first attempt of each action does it and then
    `lose` decides how its answer is lost (an exception raised in place of the answer; None: answered)."""

    def __init__(self, status: str = "completed_with_failures", lose: Exception | None = None) -> None:
        self.status: str | None = status  # None once deleted
        self.lose = lose
        self.seen: list[str] = []
        self.transport = httpx.MockTransport(self.handle)

    def handle(self, request: httpx.Request) -> httpx.Response:
        """Act as the API does, losing the first answer as told."""
        self.seen.append(f"{request.method} {request.url.path}")
        if self.status is None:
            return httpx.Response(404, json=NOT_FOUND)
        if request.method == "GET":
            return httpx.Response(200, json={**JOB, "status": self.status})
        acted = False
        if request.method == "DELETE":
            self.status, acted = None, True
            answer = httpx.Response(204)
        elif self.status in ("failed", "completed_with_failures"):
            self.status, acted = "queued", True
            answer = httpx.Response(202, json={**JOB, "status": "queued"})
        else:
            answer = httpx.Response(409, json=NOTHING_TO_RETRY)
        if self.lose is not None:
            lost, self.lose = self.lose, None
            if isinstance(lost, httpx.ConnectError) and acted:
                raise AssertionError("a connect error never reaches the API: script it on a refused action")
            raise lost
        return answer


def client(transport: httpx.BaseTransport, **options: Any) -> Client:
    """A client of a scripted API that does not really sleep between retries."""
    return Client("http://api", "cg_k", transport=transport, sleep=lambda seconds: None, **options)


# --- a retry or delete whose answer was lost -----------------------------------------------------------------


def test_a_retry_whose_answer_was_lost_returns_the_requeued_job() -> None:
    """Given an API that puts the failed images back in the queue but whose answer times out, when retry_job
    resends and hears 409 "nothing to retry", then a GET shows the job queued and retry_job returns it (before:
    ApiError 409, `catalogan jobs retry` exit 4, although the images were running again)."""
    api = JobApi(lose=httpx.ReadTimeout("timed out"))
    with client(api.transport) as sdk:
        job = sdk.retry_job("j1")
    assert job.status == "queued"
    assert api.seen == ["POST /v1/jobs/j1/retry", "POST /v1/jobs/j1/retry", "GET /v1/jobs/j1"]


@pytest.mark.parametrize("status", ["cancelled", "succeeded"])
def test_a_retry_answered_409_at_once_is_raised_without_a_lookup(status: str) -> None:
    """Given a cancelled or succeeded job, when retry_job's one attempt is answered 409, then ApiError 409."""
    api = JobApi(status=status)
    with client(api.transport) as sdk, pytest.raises(ApiError) as refused:
        sdk.retry_job("j1")
    assert refused.value.status == 409 and api.seen == ["POST /v1/jobs/j1/retry"]


def test_a_lost_answer_does_not_hide_a_real_conflict() -> None:
    """Given a cancelled job whose first retry answer is lost in a reset connection, when the resend is
    answered 409, then a GET shows the job cancelled (not retried) and ApiError 409 is raised."""
    api = JobApi(status="cancelled", lose=httpx.ReadError("connection reset by peer"))
    with client(api.transport) as sdk, pytest.raises(ApiError) as refused:
        sdk.retry_job("j1")
    assert refused.value.status == 409
    assert api.seen == ["POST /v1/jobs/j1/retry", "POST /v1/jobs/j1/retry", "GET /v1/jobs/j1"]


def test_a_resend_after_a_connect_error_is_taken_at_its_word() -> None:
    """Given a first attempt refused before it was sent (connect error), when the resend is answered 409, then
    that is the API's answer to the only request it saw: ApiError 409, no lookup."""
    api = JobApi(status="succeeded", lose=httpx.ConnectError("connection refused"))
    with client(api.transport) as sdk, pytest.raises(ApiError) as refused:
        sdk.retry_job("j1")
    assert refused.value.status == 409
    assert api.seen == ["POST /v1/jobs/j1/retry", "POST /v1/jobs/j1/retry"]


def test_a_delete_whose_answer_was_lost_is_done() -> None:
    """Given an API that deletes the job but whose answer times out, when delete_job resends and hears 404,
    then a GET confirms the job is gone and delete_job returns (before: ApiError 404, exit 3)."""
    api = JobApi(status="succeeded", lose=httpx.ReadTimeout("timed out"))
    with client(api.transport) as sdk:
        sdk.delete_job("j1")
    assert api.seen == ["DELETE /v1/jobs/j1", "DELETE /v1/jobs/j1", "GET /v1/jobs/j1"]


def test_deleting_a_job_that_is_not_there_is_still_a_404() -> None:
    """Given no job j1, when delete_job's one attempt is answered 404, then ApiError 404."""
    api = JobApi()
    api.status = None
    with client(api.transport) as sdk, pytest.raises(ApiError) as missing:
        sdk.delete_job("j1")
    assert missing.value.status == 404 and api.seen == ["DELETE /v1/jobs/j1"]


# --- a success that is not the API's -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content_type", "body"),
    [("text/html", b"<!doctype html><title>Sign in</title>"), ("application/json", b"[1, 2]")],
)
def test_a_success_that_is_not_the_apis_json_names_the_url(content_type: str, body: bytes) -> None:
    """Given CATALOGAN_API_URL pointing at a proxy that answers 200 with its sign-in page (or JSON that is not
    an object), when the SDK gets a job, then NotCataloganApiError (a ClientError, exit 6 configuration) names
    the URL and the variable (before: a raw json.JSONDecodeError, a traceback in the CLI)."""
    page = httpx.MockTransport(
        lambda request: httpx.Response(200, headers={"content-type": content_type}, content=body)
    )
    with Client("http://proxy.example", "cg_k", transport=page) as sdk, pytest.raises(ClientError) as wrong:
        sdk.get_job("j1")
    assert isinstance(wrong.value, NotCataloganApiError)
    assert "http://proxy.example/v1/jobs/j1" in str(wrong.value) and "CATALOGAN_API_URL" in str(wrong.value)
    assert exit_code_for(wrong.value) is ExitCode.CONFIG


# --- the real API --------------------------------------------------------------------------------------------


def test_a_422_naming_a_thousand_items_keeps_every_field(api: TestClient, tenant: Credentials) -> None:
    """Given a submit of 1,000 items with count 0, when the API answers its 422 problem (about 120 KB), then
    ApiError.problem["errors"] names all 1,000 fields (before: the body was cut at 64 KiB, did not parse, and
    the problem held only its first 500 characters, no `errors`)."""
    with (
        Client("http://testserver", tenant.api_key, transport=api._transport) as sdk,
        pytest.raises(ApiError) as refused,
    ):
        sdk.submit_job([{"category": "a", "count": 0}] * 1000)
    errors = refused.value.problem["errors"]
    assert refused.value.status == 422 and len(errors) == 1000
    assert {error["field"] for error in errors} == {f"items.{index}.count" for index in range(1000)}


def test_an_estimate_carries_the_quota_cost_and_model_of_a_gated_job(
    api: TestClient, tenant: Credentials
) -> None:
    """Given a job of 10 images behind a quality gate of 3 redraws on the bulk queue, when estimated, then the
    estimate charges 40 to the quota and names the model version (before: `quality_gate` and `queue` could not
    be passed, and quota_cost and the model were dropped)."""
    with Client("http://testserver", tenant.api_key, transport=api._transport) as sdk:
        estimate = sdk.estimate_job(
            [{"category": "a", "count": 10}],
            quality_gate={"min_confidence": 0.6, "max_redraws": 3},
            queue="bulk",
        )
    assert (estimate.images, estimate.quota_cost) == (10, 40)
    assert (estimate.model_name, estimate.model_version) == ("tiny", 1)


def test_an_estimate_of_a_manifest_uri_sends_it_without_items(api: TestClient, tenant: Credentials) -> None:
    """Given an `s3://` manifest outside the tenant's allowed prefixes, when estimated, then the API's answer is
    about `manifest_uri` (it was sent, and no `items`)."""
    with (
        Client("http://testserver", tenant.api_key, transport=api._transport) as sdk,
        pytest.raises(ApiError) as refused,
    ):
        sdk.estimate_job(manifest_uri="s3://elsewhere/exports/missing.csv")
    assert refused.value.status == 422
    assert [error["field"] for error in refused.value.problem["errors"]] == ["manifest_uri"]
