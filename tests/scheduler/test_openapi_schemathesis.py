"""Schemathesis over every operation of the API's own OpenAPI document, authenticated with a real key.

The app is the real one (`create_app`) on this process's PostgreSQL database with a registered model, a
tenant and its API key; schemathesis reads `/openapi.json` from it and, for every operation, sends examples
drawn from the document (positive and negative), then checks each answer: no 5xx, the status code is one
the operation documents, the content type is a documented one, the body matches the documented schema, and
invalid requests are rejected.
"""

from __future__ import annotations

import json
import secrets
import uuid
import zlib
from collections.abc import Callable, Iterator
from typing import Any

import jsonschema
import pytest
import schemathesis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings
from schemathesis import AuthContext, Case, CheckContext, GenerationMode, Response
from schemathesis.checks import positive_data_acceptance
from sqlalchemy.orm import sessionmaker

from db.engine import transaction
from db.settings import BrokerSettings
from db.storage import MemoryStore, ObjectStore
from db.tables import ApiKey
from db.tenants import API_KEY_PREFIX_BYTES, API_KEY_SCHEME, API_KEY_SECRET_BYTES, hash_api_key
from scheduler.api.app import create_app
from scheduler.api.deps import Services
from scheduler.api.limits import MemoryRateLimiter
from scheduler.settings import ApiSettings, WebhookSettings
from tests.pipeline import make_model_version
from tests.scheduler.conftest import Credentials

pytestmark = pytest.mark.slow

EXAMPLES_PER_OPERATION = 20
# The names the document's examples use (`fashion-cgan`, `fashion-cgan@3`, sneaker, dress), registered for
# real, so that the documented examples reach planning and previews instead of stopping at a 422.
EXAMPLE_MODEL = "fashion-cgan"
EXAMPLE_CATEGORIES = ("sneaker", "dress", "t-shirt")


@pytest.fixture
def schemathesis_api(
    make_api: Callable[..., TestClient],
    pg_factory: Any,
    api_store: ObjectStore,
    s3_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> TestClient:
    """The app with the document's example model registered, a short preview timeout and a stand-in worker
    that answers previews through the store; `s3://` manifests are read from the real SeaweedFS server.
    Schemathesis's requests go to it for the duration of the test."""
    for name, value in s3_env.items():
        monkeypatch.setenv(name, value)
    for version in (1, 2, 3):
        make_model_version(pg_factory, name=EXAMPLE_MODEL, version=version, categories=EXAMPLE_CATEGORIES)
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
    monkeypatch.setattr(APP_UNDER_TEST, "target", client.app)
    return client


# The key schemathesis sends. It must be known when the module is collected: schemathesis builds the cases
# of its examples and coverage phases then, before any fixture has made a tenant. Each test registers it
# for its tenant (hashed, like every key), so the API authenticates it the usual way.
FUZZ_KEY_PREFIX = secrets.token_hex(API_KEY_PREFIX_BYTES)
FUZZ_API_KEY = f"{API_KEY_SCHEME}_{FUZZ_KEY_PREFIX}_{secrets.token_urlsafe(API_KEY_SECRET_BYTES)}"


@pytest.fixture
def schemathesis_tenant(make_tenant: Callable[..., Credentials], pg_factory: Any) -> Credentials:
    """A tenant whose rate limit and job quota leave room for every example, holding `FUZZ_API_KEY`."""
    credentials = make_tenant(
        requests_per_minute=1_000_000,
        max_concurrent_jobs=1_000_000,
        images_per_day=5_000,
        highest_queue="interactive",  # every queue the document offers is allowed
    )
    with transaction(pg_factory) as session:
        session.add(
            ApiKey(
                id=uuid.uuid4().hex,
                tenant_id=credentials.tenant_id,
                name="schemathesis",
                prefix=FUZZ_KEY_PREFIX,
                key_hash=hash_api_key(FUZZ_API_KEY),
            )
        )
    return Credentials(credentials.tenant_id, FUZZ_API_KEY, credentials.webhook_secret)


@pytest.fixture
def existing_job_id(schemathesis_api: TestClient, schemathesis_tenant: Credentials) -> str:
    """A real job of the tenant, so that job routes are reached past their 404."""
    body = {"model": EXAMPLE_MODEL, "items": [{"category": "sneaker", "count": 2}]}
    response = schemathesis_api.post("/v1/jobs", json=body, headers=schemathesis_tenant.headers)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


class AppUnderTest:
    """An ASGI app that forwards every request to `target`.

    pytest needs the operations (hence the document) when it collects the module, before any fixture has
    built the real app on its database; so the schema is loaded through this forwarder, first from an app
    with inert services (the document does not depend on them), then each test points it at its own app.
    """

    def __init__(self, target: Any) -> None:
        self.target = target

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.target(scope, receive, send)


def document_app() -> FastAPI:
    """The app with inert services: enough to serve its OpenAPI document."""
    services = Services(
        settings=ApiSettings(),
        webhooks=WebhookSettings(),
        broker=BrokerSettings(broker_url=""),
        session_factory=sessionmaker(),
        store=MemoryStore(),
        publisher=lambda queue, chunk_ids: None,
        rate_limiter=MemoryRateLimiter(),
    )
    return create_app(services.settings, services=services)


APP_UNDER_TEST = AppUnderTest(document_app())
schema = schemathesis.openapi.from_asgi("/openapi.json", APP_UNDER_TEST)
DOCUMENT = dict(schema.raw_schema)


@schema.auth()
class TenantKey:
    """`Authorization: Bearer <FUZZ_API_KEY>` on every case except those where schemathesis leaves the
    credentials out or breaks them on purpose (it then expects the 401)."""

    def get(self, case: Case, context: AuthContext) -> str:
        """The key."""
        return FUZZ_API_KEY

    def set(self, case: Case, data: str, context: AuthContext) -> None:
        """Put it in the Authorization header."""
        case.headers = {**(case.headers or {}), "Authorization": f"Bearer {data}"}


# A request the document allows may still be refused, rightly, with a 422 naming the field and the rule:
# - it names what does not exist, or is not allowed, right now: a model or category the registry lacks, a
#   cursor this API never issued, a manifest that cannot be read, an Idempotency-Key an earlier case used
#   with another body, more images than the operator allows per job (a bound on a sum, which JSON Schema
#   cannot state);
# - it breaks a rule the document states in words only: the content of an uploaded manifest (`file`, "binary")
#   and of the multipart `spec` (JSON text), and SKUs and categories that cannot be part of an object key
#   (control and format characters, a UTF-8 byte length: no portable `pattern` says that).
# Schemathesis's `positive_data_acceptance` calls any 422 on valid data a failure, so it runs as is except
# for a 422 whose every error is one of these.
ACCEPTABLE_REJECTIONS = {
    ("model", "registered"),
    ("model", "not_retired"),
    ("category", "model_category"),
    ("cursor", "opaque_cursor"),
    ("manifest_uri", "readable"),
    ("manifest_uri", "tenant_prefix"),
    ("items", "max_images_per_job"),
    # Chunks a job makes (items, counts and chunk_size together) and a job's cost (images × (1 + redraws))
    # against the tenant's whole daily quota: bounds on sums and products, which JSON Schema cannot state.
    ("chunk_size", "max_chunks_per_job"),
    ("items", "max_chunks_per_job"),
    ("items", "images_per_day"),
    ("quality_gate.max_redraws", "images_per_day"),
    ("Idempotency-Key", "idempotency_key_reused"),
    # Creative control: the sources must be delivered images of the tenant (none exist for the fuzzer), and
    # ψ is refused with interpolation (the frames lie between the sources' own latents).
    ("variation.source", "delivered_image"),
    ("interpolation.start", "delivered_image"),
    ("interpolation.end", "delivered_image"),
    ("truncation", "value_error"),
    ("variation.count", "max_images_per_item"),
    ("interpolation.frames", "max_images_per_item"),
}


def is_acceptable_rejection(error: dict[str, str]) -> bool:
    """True for a 422 error of the kinds listed above."""
    field, rule = error.get("field", ""), error.get("rule", "")
    if field.split(".")[0] in ("file", "spec"):
        return True
    if rule == "object_key_segment":
        return True
    if rule == "job_spec" and field.endswith(".category"):
        return True  # planning: "items[0].category: 'x' is not a category of fashion-cgan@1"
    return (field, rule) in ACCEPTABLE_REJECTIONS


def json_body_is_exactly_valid(case: Case) -> bool:
    """Whether the case's JSON body is valid for the document with exact integer arithmetic.

    Schemathesis compares big integers as floats, so it counts `"seed": 9223372036854775999` (over the
    documented maximum 2**63 - 1) as valid; the API rightly refuses it.
    """
    if case.media_type != "application/json" or not isinstance(case.body, (dict, list)):
        return True
    body = DOCUMENT["paths"][case.operation.path][case.operation.method.lower()].get("requestBody", {})
    body_schema = body.get("content", {}).get("application/json", {}).get("schema")
    if body_schema is None:
        return True
    validator = jsonschema.Draft202012Validator({**body_schema, "components": DOCUMENT["components"]})
    return validator.is_valid(case.body)


def positive_data_accepted(ctx: CheckContext, response: Response, case: Case) -> bool | None:
    """`positive_data_acceptance`, except for the 422s above and bodies that only schemathesis's float
    arithmetic takes for valid."""
    if case.meta is not None and case.meta.generation.mode.is_positive and response.status_code == 422:
        errors = response.json().get("errors") or []
        if errors and all(is_acceptable_rejection(error) for error in errors):
            return None
        if not json_body_is_exactly_valid(case):
            return None
    return positive_data_acceptance(ctx, response, case)  # type: ignore[no-any-return]


@schema.parametrize()
@settings(
    max_examples=EXAMPLES_PER_OPERATION,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
def test_every_operation_conforms_to_its_document(
    case: Case,
    schemathesis_api: TestClient,
    schemathesis_tenant: Credentials,
    existing_job_id: str,
) -> None:
    """Given any request the document describes (and invalid ones), when sent with a valid key, then the
    answer is not a 5xx, its status, content type and body are documented, and invalid input is refused."""
    job_id = (case.path_parameters or {}).get("job_id")
    # Half of the valid cases (chosen by the drawn id itself, so a run replays exactly) name the real job, so
    # that job routes are exercised past their 404; negative cases keep their invalid id.
    positive = case.meta is None or case.meta.generation.mode == GenerationMode.POSITIVE
    if isinstance(job_id, str) and positive and zlib.crc32(job_id.encode()) % 2 == 0:
        case.path_parameters["job_id"] = existing_job_id  # type: ignore[index]
    case.call_and_validate(
        excluded_checks=[positive_data_acceptance],
        additional_checks=[positive_data_accepted],
    )


def test_the_fuzzed_document_is_the_one_the_app_serves(schemathesis_api: TestClient) -> None:
    """Given the real app, when /openapi.json is fetched, then it is the document the fuzzing drew from."""
    assert schemathesis_api.get("/openapi.json").json() == DOCUMENT


# Regression tests for what the fuzzing found, each checked directly.


def test_a_405_allows_every_method_of_the_resource(schemathesis_api: TestClient) -> None:
    """Given /v1/jobs (GET and POST), when it is sent a DELETE, then the 405's Allow names GET and POST."""
    response = schemathesis_api.delete("/v1/jobs")
    assert response.status_code == 405
    assert {"GET", "POST"} <= {method.strip() for method in response.headers["Allow"].split(",")}


@pytest.mark.parametrize("body", [{"seed": False}, {"count": "2"}, {"count": 2.5}])
def test_request_fields_are_not_coerced(
    schemathesis_api: TestClient, schemathesis_tenant: Credentials, body: dict[str, Any]
) -> None:
    """Given a preview whose number is a boolean, a string or a fraction, when sent, then it is a 422 naming
    the field (not a preview with seed 0 or count 2)."""
    request = {"model": EXAMPLE_MODEL, "category": "dress", **body}
    response = schemathesis_api.post("/v1/previews", json=request, headers=schemathesis_tenant.headers)
    assert response.status_code == 422, response.text
    assert [error["field"] for error in response.json()["errors"]] == list(body)


def test_an_estimate_reads_a_manifest_uri(
    schemathesis_api: TestClient,
    schemathesis_tenant: Credentials,
    make_api: Callable[..., TestClient],
    s3_store: ObjectStore,
) -> None:
    """Given a CSV manifest in an S3 exports prefix the operator allowed for the tenant, when a job with its
    manifest_uri is estimated, then its rows are counted."""
    key = "exports/skus.csv"
    s3_store.put(key, b"sku,category,count\nSKU-1,sneaker,3\nSKU-2,dress,2.0\n")
    allowed = {schemathesis_tenant.tenant_id: [s3_store.uri("exports/")]}
    api = make_api(ApiSettings(manifest_uri_allowed_prefixes=allowed))
    body = {"model": EXAMPLE_MODEL, "manifest_uri": s3_store.uri(key), "chunk_size": 2}
    response = api.post("/v1/jobs:estimate", json=body, headers=schemathesis_tenant.headers)
    assert response.status_code == 200, response.text
    assert (response.json()["images"], response.json()["chunks"]) == (5, 3)


def _chunked(size: int) -> Iterator[bytes]:
    yield b'{"category": "dress", "items": ['
    for _ in range(size // 64):
        yield b'{"category": "dress", "count": 1, "sku": "SKU-0000000000000001"},'
    yield b'{"category": "dress", "count": 1}]}'


def _deep_parquet() -> bytes:
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = 1_000_000
    sink = io.BytesIO()
    indices = pa.array([0] * rows, type=pa.int32())
    pq.write_table(pa.table({"category": pa.DictionaryArray.from_arrays(indices, pa.array(["dress"]))}), sink)
    return sink.getvalue()


# Shapes a hostile tenant sends that document-driven generation does not produce: manifest files that break
# the parsers' own limits, and chunked bodies (no Content-Length) over the size limit on every JSON endpoint.
HOSTILE_UPLOADS: dict[str, tuple[str, Callable[[], bytes]]] = {
    "csv-cell-over-the-csv-module-limit": (
        "long.csv",
        lambda: b"sku,category\nS1,dress\nS2," + b"b" * 200_000 + b"\n",
    ),
    "jsonl-nested-30000-deep": ("deep.jsonl", lambda: b"[" * 30_000 + b"]" * 30_000 + b"\n"),
    "jsonl-line-over-64-kib": (
        "wide.jsonl",
        lambda: b'{"category": "dress", "sku": "' + b"x" * 70_000 + b'"}\n',
    ),
    "parquet-of-a-million-rows": ("rows.parquet", _deep_parquet),
    "csv-not-utf8": ("latin.csv", lambda: b"sku,category\n\xe9t\xe9,dress\n"),
}


@pytest.mark.parametrize("shape", list(HOSTILE_UPLOADS))
def test_hostile_manifest_uploads_are_documented_422s(
    shape: str, schemathesis_api: TestClient, schemathesis_tenant: Credentials
) -> None:
    """Given a manifest upload that breaks a parser limit (a CSV cell over 131,072 characters, JSONL nested
    30,000 deep or a line over 64 KiB, a million-row Parquet, non-UTF-8 CSV), when submitted, then the answer
    is a documented 422 problem naming a `file` field, and conforms to the document (no 5xx)."""
    name, make = HOSTILE_UPLOADS[shape]
    response = schemathesis_api.post(
        "/v1/jobs", files={"file": (name, make())}, headers=schemathesis_tenant.headers
    )
    schema["/v1/jobs"]["POST"].Case(media_type="multipart/form-data").validate_response(response)
    assert response.status_code == 422, response.text[:300]
    assert response.json()["errors"][0]["field"].startswith("file")


@pytest.mark.parametrize("path", ["/v1/jobs", "/v1/jobs:estimate", "/v1/previews"])
def test_chunked_bodies_over_the_limit_are_documented_413s(
    path: str, make_api: Callable[..., TestClient], schemathesis_tenant: Credentials
) -> None:
    """Given a 2 KiB body limit, when a chunked JSON body of about 4 KiB is posted to each JSON endpoint, then
    the answer is the documented 413 problem (not a 400 from the body parser)."""
    api = make_api(ApiSettings(max_request_bytes=2048))
    headers = {**schemathesis_tenant.headers, "content-type": "application/json"}
    response = api.post(path, content=_chunked(4096), headers=headers)
    schema[path]["POST"].Case(media_type="application/json").validate_response(response)
    assert response.status_code == 413, response.text[:300]


def test_every_bound_in_the_document_is_json_schema() -> None:
    """Given the document, when its schemas are walked, then no bound is left in pydantic's spelling (`ge`,
    `le`, ...), which JSON Schema tools ignore: a bound they cannot see is not checked by the fuzzing either."""

    def keys(node: Any) -> set[str]:
        if isinstance(node, dict):
            return set(node) | {key for value in node.values() for key in keys(value)}
        if isinstance(node, list):
            return {key for value in node for key in keys(value)}
        return set()

    assert keys(DOCUMENT["components"]) & {"ge", "le", "gt", "lt"} == set()
