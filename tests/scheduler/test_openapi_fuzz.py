"""Property-based fuzzing of the OpenAPI document: no generated request makes the API answer 5xx.

Each operation is called with parameters and JSON bodies drawn from its own schema ,
mixed with arbitrary JSON and odd path values (see schema_strategies.py); every error must be `application/problem+json`.
"""

from __future__ import annotations

import json
import string
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from db.storage import ObjectStore
from scheduler.settings import ApiSettings
from tests.scheduler.conftest import Credentials
from tests.scheduler.schema_strategies import strategy_for

pytestmark = pytest.mark.slow

EXAMPLES_PER_OPERATION = 40
JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)


def resolve(schema: Any, components: dict[str, Any]) -> Any:
    """Inline every `$ref` of an OpenAPI schema (jsonschema generators want a self-contained schema)."""
    if isinstance(schema, dict):
        if "$ref" in schema:
            return resolve(components[schema["$ref"].rsplit("/", 1)[1]], components)
        return {
            key: resolve(value, components)
            for key, value in schema.items()
            if key not in ("examples", "example")
        }
    if isinstance(schema, list):
        return [resolve(item, components) for item in schema]
    return schema


def operations(openapi: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """(method, path, operation) for every operation in the document."""
    return [
        (method.upper(), path, operation)
        for path, item in openapi["paths"].items()
        for method, operation in item.items()
        if method in {"get", "post", "put", "patch", "delete"}
    ]


@pytest.fixture
def fuzz_api(
    make_api: Callable[..., TestClient],
    model_version: Any,
    api_store: ObjectStore,
    s3_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> TestClient:
    """The app with a small preview timeout and a stand-in worker answering previews through the store;
    `s3://` manifests are read from the real SeaweedFS server."""
    for name, value in s3_env.items():
        monkeypatch.setenv(name, value)
    client = make_api(ApiSettings(preview_timeout_seconds=2))

    def answer_preview(name: str, args: list[dict[str, Any]], queue: str, expires: float) -> None:
        request = args[0]
        entries = []
        for index in range(request["count"]):
            key = f"{request['key_prefix']}/{index:02d}.png"
            api_store.put(key, b"\x89PNG")
            entries.append({"index": index, "category": request["category"], "key": key})
        api_store.put(f"{request['key_prefix']}/result.json", json.dumps({"images": entries}).encode())

    client.app.state.services.send_task = answer_preview  # type: ignore[attr-defined]
    return client


@pytest.fixture
def fuzz_tenant(make_tenant: Callable[..., Credentials]) -> Credentials:
    """A tenant whose rate limit and job quota leave room for every example (images per day stay small,
    so drawn giant jobs are refused with 429 before planning)."""
    return make_tenant(requests_per_minute=100_000, max_concurrent_jobs=100_000, images_per_day=5_000)


CATEGORY_NAMES = st.sampled_from(["a", "b", "c", "B"])
PLAUSIBLE_JOB = st.fixed_dictionaries(
    {
        "items": st.lists(
            st.fixed_dictionaries(
                {"category": CATEGORY_NAMES, "count": st.integers(1, 6)},
                optional={"sku": st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,20}", fullmatch=True)},
            ),
            min_size=1,
            max_size=3,
        )
    },
    optional={"seed": st.integers(0, 2**63 - 1), "chunk_size": st.integers(1, 8), "model": st.just("tiny")},
)
# Bodies a real client would send, so that examples reach planning and previews, not only validation.
PLAUSIBLE = {
    "/v1/jobs": PLAUSIBLE_JOB,
    "/v1/jobs:estimate": PLAUSIBLE_JOB,
    "/v1/previews": st.fixed_dictionaries(
        {"category": CATEGORY_NAMES},
        optional={"count": st.integers(1, 8), "truncation": st.floats(0.3, 1.0)},
    ),
}


@pytest.fixture
def fuzz_job_id(fuzz_api: TestClient, fuzz_tenant: Credentials) -> str:
    """A real job of the fuzzing tenant, so that job routes are reached past their 404."""
    body = {"items": [{"category": "a", "count": 2}]}
    return str(fuzz_api.post("/v1/jobs", json=body, headers=fuzz_tenant.headers).json()["id"])


def with_model_names(body: Any, category: str, model: str) -> Any:
    """`body` with every `category` and `model` field set to names the registry knows, so that drawn
    requests reach planning and the workers' queue, not only the 422s of unknown names."""
    if isinstance(body, dict):
        names = {"category": category, "model": model}
        return {k: names[k] if k in names else with_model_names(v, category, model) for k, v in body.items()}
    if isinstance(body, list):
        return [with_model_names(item, category, model) for item in body]
    return body


OPERATION_IDS = [
    f"{method} {path}"
    for method, path in [
        ("GET", "/healthz"),
        ("GET", "/readyz"),
        ("GET", "/metrics"),
        ("POST", "/v1/jobs"),
        ("GET", "/v1/jobs"),
        ("GET", "/v1/jobs/{job_id}"),
        ("DELETE", "/v1/jobs/{job_id}"),
        ("POST", "/v1/jobs/{job_id}/cancel"),
        ("POST", "/v1/jobs/{job_id}/retry"),
        ("POST", "/v1/jobs:estimate"),
        ("GET", "/v1/jobs/{job_id}/images"),
        ("GET", "/v1/jobs/{job_id}/manifest"),
        ("GET", "/v1/jobs/{job_id}/shards"),
        ("GET", "/v1/models"),
        ("POST", "/v1/previews"),
    ]
]


def test_the_document_lists_every_fuzzed_operation(api: TestClient) -> None:
    """Given the OpenAPI document, when its operations are listed, then they are exactly the fuzzed ones."""
    assert sorted(f"{m} {p}" for m, p, _ in operations(api.app.openapi())) == sorted(OPERATION_IDS)  # type: ignore[attr-defined]


@pytest.mark.parametrize("operation_id", OPERATION_IDS)
@settings(
    max_examples=EXAMPLES_PER_OPERATION,
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.filter_too_much,
    ],
)
@given(data=st.data())
def test_no_generated_request_gets_a_5xx(
    fuzz_api: TestClient, fuzz_tenant: Credentials, fuzz_job_id: str, operation_id: str, data: st.DataObject
) -> None:
    """Given any request the schema allows (and some it does not), when sent, then the answer is below 500
    and every error is a problem document."""
    openapi = fuzz_api.app.openapi()  # type: ignore[attr-defined]
    components = openapi.get("components", {}).get("schemas", {})
    method, path_template = operation_id.split(" ", 1)
    operation = openapi["paths"][path_template][method.lower()]

    path = path_template
    if "{job_id}" in path:
        job_id = data.draw(
            st.one_of(
                st.text(string.ascii_letters + string.digits + "-_.~%:", min_size=1, max_size=40),
                st.just("0" * 32),
                st.just(fuzz_job_id),
            ),
            label="job_id",
        )
        path = path.replace("{job_id}", quote(job_id, safe=""))
    params: dict[str, Any] = {}
    for parameter in operation.get("parameters", []):
        if parameter["in"] != "query":
            continue
        schema = resolve(parameter.get("schema", {}), components)
        value = data.draw(
            st.one_of(strategy_for(schema), st.text(max_size=20)) | st.none(), label=parameter["name"]
        )
        if value is not None and not isinstance(value, (dict, list)):
            params[parameter["name"]] = str(value) if not isinstance(value, bool) else str(value).lower()
    headers = dict(fuzz_tenant.headers)
    if data.draw(st.booleans(), label="with idempotency key"):
        headers["Idempotency-Key"] = data.draw(st.text(string.printable.strip(), min_size=0, max_size=300))
    body = operation.get("requestBody", {}).get("content", {}).get("application/json")
    kwargs: dict[str, Any] = {}
    if body is not None:
        schema = resolve(body["schema"], components)
        drawn = data.draw(
            st.one_of(strategy_for(schema), JSON_VALUES, PLAUSIBLE.get(path, st.nothing())), label="body"
        )
        if data.draw(st.booleans(), label="use the model's names"):
            category = data.draw(st.sampled_from(["a", "b", "c", "B"]))
            model = data.draw(st.sampled_from(["tiny", "tiny@1", "tiny@2"]))
            drawn = with_model_names(drawn, category, model)
        kwargs["json"] = drawn

    response = fuzz_api.request(method, path, params=params, headers=headers, **kwargs)

    event(f"HTTP {response.status_code}")  # shown by --hypothesis-show-statistics
    assert response.status_code < 500, (method, path, params, kwargs, response.text[:500])
    if response.status_code >= 400:
        assert response.headers["content-type"].startswith("application/problem+json"), response.text[:200]
