"""The ONE place where errors become HTTP statuses: RFC 9457 `application/problem+json` bodies.

Every error a route lets through lands here. A problem body has `type`, `title`, `status`, `detail`,
`instance`, and for 422s an `errors` list whose entries name the `field` and the `rule` it broke.
Unexpected exceptions become a 500 problem without a traceback (the traceback goes to the log).
"""

from __future__ import annotations

import logging
import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError as FastApiValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import InterfaceError as SqlInterfaceError
from sqlalchemy.exc import OperationalError as SqlOperationalError
from sqlalchemy.exc import TimeoutError as SqlPoolTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException

from db.errors import (
    AuthenticationError,
    CataloganError,
    ConfigError,
    ConflictError,
    IdempotencyMismatchError,
    InvalidKeyError,
    InvalidTransitionError,
    LimitExceededError,
    NotFoundError,
    ObjectNotFoundError,
    PlanningError,
    ServiceUnavailableError,
    StorageError,
    TransientStorageError,
)
from scheduler.errors import (
    JobStateError,
    PayloadTooLargeError,
    RequestValidationError,
    UnsafeWebhookTargetError,
    UnsupportedMediaTypeError,
)

PROBLEM_MEDIA_TYPE = "application/problem+json"
# What a client is told to wait when the database does not answer.
DATABASE_RETRY_AFTER_SECONDS = 5
PROBLEM_TYPE_BASE = "urn:catalogan:problem:"
# FastAPI's detail when reading or decoding a JSON body failed before validation (it answers 400 with it).
FASTAPI_BODY_PARSE_ERROR = "There was an error parsing the body"
HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}

log = logging.getLogger(__name__)

# Most specific first: the first class an exception is an instance of decides its status and slug.
STATUS_FOR: list[tuple[type[BaseException], int, str, str]] = [
    (AuthenticationError, 401, "unauthenticated", "Missing or invalid API key"),
    (RequestValidationError, 422, "validation", "The request broke a rule"),
    (IdempotencyMismatchError, 422, "validation", "The request broke a rule"),
    (UnsafeWebhookTargetError, 422, "validation", "The request broke a rule"),
    (InvalidKeyError, 422, "validation", "The request broke a rule"),
    (PayloadTooLargeError, 413, "payload-too-large", "Request body too large"),
    (UnsupportedMediaTypeError, 415, "unsupported-media-type", "Unsupported content type"),
    (PlanningError, 422, "validation", "The request broke a rule"),
    (LimitExceededError, 429, "too-many-requests", "Limit exceeded"),
    (ObjectNotFoundError, 404, "not-found", "Not found"),
    (NotFoundError, 404, "not-found", "Not found"),
    (JobStateError, 409, "conflict", "The job's status does not allow this"),
    (InvalidTransitionError, 409, "conflict", "The job's status does not allow this"),
    (ConflictError, 409, "conflict", "Conflict"),
    (ServiceUnavailableError, 503, "unavailable", "A backing service did not answer"),
    (TransientStorageError, 503, "unavailable", "A backing service did not answer"),
    (StorageError, 502, "storage", "The object store failed"),
    (ConfigError, 500, "misconfigured", "The server is misconfigured"),
]

EXAMPLE_PROBLEM: dict[str, Any] = {
    "type": "urn:catalogan:problem:validation",
    "title": "The request broke a rule",
    "status": 422,
    "detail": "items.0.count: must be ≤ 100000",
    "instance": "/v1/jobs",
    "errors": [{"field": "items.0.count", "rule": "less_than_equal", "message": "must be ≤ 100000"}],
}


def problem_doc(description: str) -> dict[str, Any]:
    """An OpenAPI `responses` entry for a problem answer, with the example problem."""
    return {"description": description, "content": {PROBLEM_MEDIA_TYPE: {"example": EXAMPLE_PROBLEM}}}


# The errors every authenticated route can answer, for the OpenAPI document.
COMMON_ERRORS: dict[int | str, dict[str, Any]] = {
    401: problem_doc("Missing, unknown or revoked API key."),
    404: problem_doc("No such job for this tenant."),
    422: problem_doc("A field broke a rule; `errors` names the field and the rule."),
    429: problem_doc("Rate limit or quota reached; see `Retry-After`."),
}


def problem_response(
    status: int,
    slug: str,
    title: str,
    detail: str,
    *,
    instance: str = "",
    errors: list[dict[str, str]] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    """A `application/problem+json` response."""
    body: dict[str, Any] = {
        "type": PROBLEM_TYPE_BASE + slug,
        "title": title,
        "status": status,
        "detail": detail,
        "instance": instance,
    }
    if errors:
        body["errors"] = errors
    return JSONResponse(body, status_code=status, media_type=PROBLEM_MEDIA_TYPE, headers=headers)


def _field_errors(exc: BaseException) -> list[dict[str, str]] | None:
    if isinstance(exc, RequestValidationError):
        return [{"field": exc.field, "rule": exc.rule, "message": str(exc)}]
    if isinstance(exc, UnsafeWebhookTargetError):
        return [{"field": "webhook_url", "rule": "public_http_target", "message": str(exc)}]
    if isinstance(exc, PlanningError | IdempotencyMismatchError):
        return [{"field": exc.field, "rule": exc.rule, "message": str(exc)}]
    if isinstance(exc, InvalidKeyError):
        # The storage layer's messages start with the field name ("sku 'a/b': must not contain '/'").
        field = str(exc).split(" ", 1)[0]
        return [{"field": field, "rule": "object_key_segment", "message": str(exc)}]
    return None


def problem_for(exc: BaseException, instance: str) -> JSONResponse:
    """The problem response for a project error (or a 500 for anything unexpected)."""
    for cls, status, slug, title in STATUS_FOR:
        if isinstance(exc, cls):
            headers: dict[str, str] = {}
            if isinstance(exc, LimitExceededError):
                headers["Retry-After"] = str(exc.retry_after_seconds)
            if isinstance(exc, AuthenticationError):
                headers["WWW-Authenticate"] = 'Bearer realm="catalogan"'
            if status >= 500:
                log.warning("%s %s: %s", status, instance, exc)
            return problem_response(
                status, slug, title, str(exc), instance=instance, errors=_field_errors(exc), headers=headers
            )
    log.exception("unexpected error on %s", instance, exc_info=exc)
    return problem_response(
        500, "internal", "Internal server error", "an unexpected error occurred", instance=instance
    )


def _pydantic_errors(exc: FastApiValidationError) -> list[dict[str, str]]:
    errors = []
    for error in exc.errors():
        location = [str(part) for part in error.get("loc", ()) if part not in ("body",)]
        field = ".".join(location) or "body"
        errors.append(
            {"field": field, "rule": str(error.get("type", "invalid")), "message": str(error.get("msg", ""))}
        )
    return errors


def allowed_methods(request: Request, fallback: str) -> str:
    """The `Allow` value of a 405: every documented method of the request's path (`fallback` when the path
    is not in the OpenAPI document).

    Starlette's own 405 names only the methods of the one route it matched, but FastAPI makes a route per
    method (`GET /v1/jobs`, `POST /v1/jobs`), so it would tell a client that a resource with GET and POST
    accepts only one of them (RFC 9110 §10.2.1: `Allow` lists the target resource's methods). The routes
    of included routers are not public in FastAPI; the document is, and lists exactly these methods.
    """
    path = request.scope.get("path", "")
    for template, item in request.app.openapi()["paths"].items():
        # `{job_id}` matches one path segment, as Starlette's default `str` convertor does.
        pattern = "[^/]+".join(re.escape(part) for part in re.split(r"\{[^}]*\}", template))
        if re.fullmatch(pattern, path):
            methods = {method.upper() for method in item if method in HTTP_METHODS}
            if "GET" in methods:
                methods.add("HEAD")  # Starlette answers HEAD on every GET route
            return ", ".join(sorted(methods))
    return fallback


def install_problem_handlers(app: FastAPI) -> None:
    """Register the handlers that turn every error into a problem response."""

    async def on_project_error(request: Request, exc: Exception) -> JSONResponse:
        return problem_for(exc, request.url.path)

    async def on_validation(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, FastApiValidationError)
        errors = _pydantic_errors(exc)
        detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors[:5])
        return problem_response(
            422, "validation", "The request broke a rule", detail, instance=request.url.path, errors=errors
        )

    async def on_http(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        if exc.status_code == 400 and exc.detail == FASTAPI_BODY_PARSE_ERROR:
            # A JSON body FastAPI could not even decode (e.g. bytes that are not UTF-8): a 422 naming the body,
            # like any other malformed JSON, not an undocumented 400.
            errors = [
                {"field": "body", "rule": "json_invalid", "message": "the body is not valid UTF-8 JSON"}
            ]
            return problem_response(
                422,
                "validation",
                "The request broke a rule",
                "body: the body is not valid UTF-8 JSON",
                instance=request.url.path,
                errors=errors,
            )
        slug = {404: "not-found", 405: "method-not-allowed", 401: "unauthenticated"}.get(
            exc.status_code, "http"
        )
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            headers["Allow"] = allowed_methods(request, fallback=headers.get("Allow", ""))
        return problem_response(
            exc.status_code,
            slug,
            str(exc.detail) if exc.status_code != 404 else "Not found",
            str(exc.detail),
            instance=request.url.path,
            headers=headers,
        )

    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        return problem_for(exc, request.url.path)

    async def on_database_unreachable(request: Request, exc: Exception) -> JSONResponse:
        # The database refused or dropped the connection: nothing was committed, so a retry is safe.
        log.warning("503 %s: database unreachable: %s", request.url.path, str(exc).splitlines()[0])
        return problem_response(
            503,
            "unavailable",
            "A backing service did not answer",
            "the database did not answer; retry later",
            instance=request.url.path,
            headers={"Retry-After": str(DATABASE_RETRY_AFTER_SECONDS)},
        )

    app.add_exception_handler(CataloganError, on_project_error)

    async def on_database_busy(request: Request, exc: Exception) -> JSONResponse:
        # No pooled connection came free within the pool timeout. Before a submit's commit nothing was done;
        # after it (rare), a retry with the same Idempotency-Key returns the job instead of making another.
        log.warning("503 %s: no database connection free: %s", request.url.path, str(exc).splitlines()[0])
        return problem_response(
            503,
            "unavailable",
            "A backing service did not answer",
            "every database connection of this server is busy; retry later",
            instance=request.url.path,
            headers={"Retry-After": str(DATABASE_RETRY_AFTER_SECONDS)},
        )

    app.add_exception_handler(FastApiValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(SqlOperationalError, on_database_unreachable)
    app.add_exception_handler(SqlInterfaceError, on_database_unreachable)
    app.add_exception_handler(SqlPoolTimeoutError, on_database_busy)
    app.add_exception_handler(Exception, on_unexpected)
