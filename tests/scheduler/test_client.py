"""The SDK's own behaviour: retries on 5xx and 429 honouring Retry-After, errors as ApiError, a public surface."""

from __future__ import annotations

import httpx
import pytest

import scheduler.client as client_module
from scheduler.client import Client
from scheduler.errors import ApiError, ClientError, TransportError

JOB = {
    "id": "j1",
    "status": "queued",
    "model": {"name": "tiny", "version": 1},
    "seed": 1,
    "counts": {"images_total": 2},
    "progress": 0.0,
    "created_at": "2026-01-01T00:00:00+00:00",
}


def scripted(responses: list[httpx.Response], seen: list[httpx.Request]) -> httpx.MockTransport:
    """A transport that answers with `responses` in order and records the requests."""

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return responses.pop(0)

    return httpx.MockTransport(handler)


def test_429_and_503_are_retried_honouring_retry_after() -> None:
    """Given a 429 (Retry-After: 7) then a 503, when getting a job, then the SDK waits 7 s, backs off, and succeeds."""
    seen: list[httpx.Request] = []
    sleeps: list[float] = []
    transport = scripted(
        [
            httpx.Response(429, headers={"Retry-After": "7"}, json={"status": 429}),
            httpx.Response(503, json={"status": 503}),
            httpx.Response(200, json=JOB),
        ],
        seen,
    )
    with Client(
        "http://api", "cg_key", transport=transport, sleep=sleeps.append, backoff_seconds=0.5
    ) as client:
        job = client.get_job("j1")
    assert job.id == "j1" and job.model_name == "tiny"
    assert sleeps == [7.0, 1.0]  # Retry-After, then the second backoff step
    assert len(seen) == 3 and all(r.headers["authorization"] == "Bearer cg_key" for r in seen)


def test_a_retried_submit_sends_the_same_idempotency_key() -> None:
    """Given a 502 on the first submit, when the SDK retries, then both attempts carry one Idempotency-Key."""
    seen: list[httpx.Request] = []
    transport = scripted([httpx.Response(502), httpx.Response(201, json=JOB)], seen)
    with Client("http://api", "k", transport=transport, sleep=lambda _: None) as client:
        client.submit_job([{"category": "a", "count": 2}])
    keys = {request.headers["idempotency-key"] for request in seen}
    assert len(seen) == 2 and len(keys) == 1


def test_a_4xx_is_raised_as_api_error_with_the_problem() -> None:
    """Given a 404 problem, when getting a job, then ApiError carries the status and the problem body."""
    problem = {"type": "urn:catalogan:problem:not-found", "status": 404, "detail": "job 'x' not found"}
    transport = scripted([httpx.Response(404, json=problem)], [])
    with Client("http://api", "k", transport=transport) as client, pytest.raises(ApiError) as error:
        client.get_job("x")
    assert error.value.status == 404 and error.value.problem == problem and "not found" in str(error.value)


def test_retries_give_up_after_max_retries() -> None:
    """Given a server that always answers 500, when called with 2 retries, then the third answer is raised."""
    seen: list[httpx.Request] = []
    transport = scripted([httpx.Response(500, json={"status": 500})] * 3, seen)
    client = Client("http://api", "k", transport=transport, max_retries=2, sleep=lambda _: None)
    with client, pytest.raises(ApiError) as error:
        client.get_job("j1")
    assert error.value.status == 500 and len(seen) == 3


def test_an_unreachable_api_is_a_transport_error() -> None:
    """Given nothing listening, when called, then TransportError after the retries."""

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    with (
        Client(
            "http://api", "k", transport=httpx.MockTransport(refuse), max_retries=1, sleep=lambda _: None
        ) as c,
        pytest.raises(TransportError),
    ):
        c.get_job("j1")


def test_the_public_surface_is_declared() -> None:
    """Given the SDK module, when imported with *, then exactly the documented names come out."""
    assert sorted(client_module.__all__) == [
        "Client",
        "Estimate",
        "Image",
        "Job",
        "JobPage",
        "Model",
        "NotCataloganApiError",
        "PreviewImage",
        "spreadsheet_safe",
        "verify_webhook",
    ]
    for name in client_module.__all__:
        assert getattr(client_module, name).__doc__


def test_client_reads_the_api_url_and_key_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Given CATALOGAN_API_URL and CATALOGAN_API_KEY, when Client() is made without arguments, then its calls go
    to that URL with that key."""
    seen: list[httpx.Request] = []
    monkeypatch.setenv("CATALOGAN_API_URL", "http://etl-api.example:8123/")
    monkeypatch.setenv("CATALOGAN_API_KEY", "cg_from_env")
    with Client(transport=scripted([httpx.Response(200, json=JOB)], seen)) as client:
        client.get_job("j1")
    assert str(seen[0].url) == "http://etl-api.example:8123/v1/jobs/j1"
    assert seen[0].headers["authorization"] == "Bearer cg_from_env"


def test_client_without_a_key_says_which_variable_to_set(monkeypatch: pytest.MonkeyPatch) -> None:
    """Given no key argument and no CATALOGAN_API_KEY, when Client() is made, then ClientError names the variable."""
    monkeypatch.delenv("CATALOGAN_API_KEY", raising=False)
    with pytest.raises(ClientError, match="CATALOGAN_API_KEY"):
        Client("http://api")


def test_a_redirect_is_an_error_naming_the_api_url_not_a_success() -> None:
    """The API never redirects: a 3xx means CATALOGAN_API_URL is not its address (http→https, a proxy). A
    DELETE answered 307 was reported as done, and a JSON call failed on an empty body."""
    from db.cli_support import ExitCode, exit_code_for

    seen: list[httpx.Request] = []
    moved = httpx.Response(301, headers={"location": "https://api/v1/jobs/j1"})
    with Client("http://api", "k", transport=scripted([moved, moved], seen)) as client:
        with pytest.raises(ApiError) as deleted:
            client.delete_job("j1")
        with pytest.raises(ApiError) as shown:
            client.get_job("j1")
    for error in (deleted.value, shown.value):
        assert (
            error.status == 301
            and "CATALOGAN_API_URL" in str(error)
            and "https://api/v1/jobs/j1" in str(error)
        )
        assert exit_code_for(error) is ExitCode.CONFIG


def test_job_ids_and_api_keys_are_checked_before_a_request_and_a_key_is_never_echoed() -> None:
    from scheduler.client import JobIdError

    seen: list[httpx.Request] = []
    with Client("http://api", "k", transport=scripted([], seen)) as client:
        for bad in ("abc/", "", "../x", "a b"):
            with pytest.raises(JobIdError, match="job id"):
                client.delete_job(bad)
    assert seen == []  # nothing was sent
    # A key read from a file keeps its newline: stripped; a key with a character inside is refused by name
    answer = httpx.Response(200, json={"data": [], "next_cursor": None})
    with Client("http://api", "cg_secret\n", transport=scripted([answer], seen)) as client:
        client.list_jobs()
    assert seen[-1].headers["authorization"] == "Bearer cg_secret"
    with pytest.raises(ClientError) as refused:
        Client("http://api", "cg_sec ret")
    assert "CATALOGAN_API_KEY" in str(refused.value) and "cg_sec" not in str(refused.value)
