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
