"""The OpenAPI document is complete: every operation is summarised, documents its errors, and carries examples."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient


def _schema(openapi: dict[str, Any], ref_or_schema: dict[str, Any]) -> dict[str, Any]:
    if "$ref" in ref_or_schema:
        return dict(openapi["components"]["schemas"][ref_or_schema["$ref"].rsplit("/", 1)[1]])
    return ref_or_schema


def test_every_operation_has_a_summary_description_and_problem_errors(api: TestClient) -> None:
    """Given the document, when each /v1 operation is read, then it is summarised, described, and lists 401/422
    as problem+json."""
    openapi = api.get("/openapi.json").json()
    for path, item in openapi["paths"].items():
        for method, operation in item.items():
            assert operation.get("summary") and operation.get("description"), f"{method} {path}"
            if path.startswith("/v1/"):
                for status in ("401", "422"):
                    assert "application/problem+json" in operation["responses"][status]["content"], (
                        method,
                        path,
                    )


def test_bodies_and_main_responses_carry_examples(api: TestClient) -> None:
    """Given the document, when request bodies and the job/image/estimate answers are read, then each has examples."""
    openapi = api.get("/openapi.json").json()
    submit = openapi["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]
    assert set(submit) == {"application/json", "multipart/form-data"}
    assert submit["application/json"]["examples"]
    for name in ("JobCreate", "JobPublic", "JobPage", "ImagePage", "EstimatePublic", "PreviewCreate"):
        assert openapi["components"]["schemas"][name].get("examples"), name
    ok = openapi["paths"]["/v1/jobs/{job_id}"]["get"]["responses"]["200"]["content"]["application/json"][
        "schema"
    ]
    assert _schema(openapi, ok)["title"] == "JobPublic"
    security = openapi["components"]["securitySchemes"]
    assert any(scheme.get("scheme") == "bearer" for scheme in security.values())


# The stable operationIds (generated SDKs and the docs link to them): renaming a route function changes one.
OPERATION_IDS = {
    ("post", "/v1/jobs"): "createJob",
    ("get", "/v1/jobs"): "listJobs",
    ("get", "/v1/jobs/{job_id}"): "getJob",
    ("post", "/v1/jobs/{job_id}/cancel"): "cancelJob",
    ("post", "/v1/jobs/{job_id}/retry"): "retryJob",
    ("post", "/v1/jobs:estimate"): "estimateJob",
    ("get", "/v1/jobs/{job_id}/images"): "listImages",
    ("get", "/v1/jobs/{job_id}/manifest"): "getManifest",
    ("get", "/v1/jobs/{job_id}/shards"): "getShardIndex",
    ("get", "/v1/models"): "listModels",
    ("post", "/v1/previews"): "createPreview",
    ("get", "/healthz"): "getHealth",
    ("get", "/readyz"): "getReadiness",
    ("get", "/metrics"): "getMetrics",
}


def test_operation_ids_are_stable_api_verbs(api: TestClient) -> None:
    """Given the document, when each operation's operationId is read, then it is the stable lowerCamelCase name
    (e.g. `createJob`, not FastAPI's generated `create_job_v1_jobs_post`) and all are unique."""
    openapi = api.get("/openapi.json").json()
    found = {
        (method, path): operation["operationId"]
        for path, item in openapi["paths"].items()
        for method, operation in item.items()
    }
    for operation, expected in OPERATION_IDS.items():
        assert found.get(operation) == expected, operation
    assert len(set(found.values())) == len(found)
    assert all("_" not in operation_id for operation_id in found.values()), found


def test_the_document_lists_every_webhook_event_the_dispatcher_sends(api: TestClient) -> None:
    """Given the document, when its `webhooks` section is read, then it lists exactly the event types the
    dispatcher sends (one name for success: job.completed), each with the Standard Webhooks envelope as body."""
    from scheduler.webhooks import EVENTS

    openapi = api.get("/openapi.json").json()
    webhooks = openapi["webhooks"]
    assert sorted(webhooks) == sorted(EVENTS)
    assert "job.completed" in webhooks and "job.succeeded" not in webhooks
    body = webhooks["job.completed"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    envelope = _schema(openapi, body)
    assert {"type", "timestamp", "data"} <= set(envelope["properties"])
