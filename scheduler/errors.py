"""Errors raised by the scheduler: the API, the webhook dispatcher and the SDK.

    CataloganError (db.errors)
    ├── DbError (db.errors)             what the one submit path and the state machine raise: PlanningError →
    │                                   422, IdempotencyMismatchError → 422, AuthenticationError → 401,
    │                                   LimitExceededError (QuotaExceededError) → 429, NotFoundError → 404,
    │                                   ServiceUnavailableError → 503, ...
    └── SchedulerError                  raised by scheduler/
        ├── RequestValidationError      an HTTP-only field broke a rule (names field and rule) → 422
        ├── PayloadTooLargeError        the request body is over the limit                  → 413
        ├── UnsupportedMediaTypeError   a body that is neither JSON nor multipart           → 415
        ├── RateLimitedError            too many requests in the window (also a db LimitExceededError) → 429
        ├── JobStateError               the job is in a state that does not allow the action → 409
        ├── PreviewTimeoutError         no worker answered a preview in time (a db ServiceUnavailableError) → 503
        ├── UnsafeWebhookTargetError    a webhook URL resolves to loopback/private/link-local
        ├── WebhookVerificationError    a webhook's signature or timestamp did not verify
        └── ClientError                 raised by the SDK (scheduler.client)
            ├── ApiError                the API answered with a problem (`status`, `http_status`, problem body)
            ├── TransportError          the API could not be reached after the retries (a ServiceUnavailableError)
            ├── ResponseTooLargeError   an answer is larger than the SDK reads
            └── NotCataloganApiError    a 2xx answer that is not the API's JSON: the URL is another server's
                                        (also a db ConfigError: exit 6 in the CLI)

HTTP statuses are mapped in one place (`scheduler/api/problems.py`), CLI exit codes in another
(`db/cli_support.py`).
"""

from __future__ import annotations

from typing import Any

from db.errors import CataloganError, ConfigError, LimitExceededError, ServiceUnavailableError


class SchedulerError(CataloganError):
    """Raised by the scheduler package (API, webhooks, SDK, CLI plumbing)."""


class RequestValidationError(SchedulerError, ValueError):
    """Raised when a request field breaks a rule; `field` names it and `rule` says which rule."""

    def __init__(self, field: str, rule: str, message: str | None = None) -> None:
        super().__init__(message or f"{field}: {rule}")
        self.field = field
        self.rule = rule


class PayloadTooLargeError(SchedulerError):
    """Raised when a request body is larger than `max_request_bytes`."""

    def __init__(self, limit_bytes: int) -> None:
        super().__init__(f"request body is larger than {limit_bytes} bytes")
        self.limit_bytes = limit_bytes


class UnsupportedMediaTypeError(SchedulerError):
    """Raised when a request body has a content type the endpoint does not accept."""


class RateLimitedError(SchedulerError, LimitExceededError):
    """Raised when a tenant sent more requests than its per-minute rate limit allows."""


class JobStateError(SchedulerError):
    """Raised when a job's status does not allow the requested action (e.g. a manifest before it finished)."""


class PreviewTimeoutError(SchedulerError, ServiceUnavailableError):
    """Raised when no worker answered a preview request within the timeout."""


class UnsafeWebhookTargetError(SchedulerError, ValueError):
    """Raised when a webhook URL is not http(s) or resolves to a loopback, private or link-local address."""


class WebhookVerificationError(SchedulerError):
    """Raised when a webhook's signature, id or timestamp does not verify."""


class ClientError(SchedulerError):
    """Raised by the Python SDK (`scheduler.client`)."""


class ApiError(ClientError):
    """Raised when the API answers with an error; `status` and `problem` hold what it said."""

    def __init__(self, status: int, problem: dict[str, Any]) -> None:
        title = problem.get("detail") or problem.get("title") or "request failed"
        super().__init__(f"HTTP {status}: {title}")
        self.status = status
        self.http_status = status  # what db.cli_support maps to an exit code
        self.problem = problem


class TransportError(ClientError, ServiceUnavailableError):
    """Raised when the API could not be reached after all retries."""


class ResponseTooLargeError(ClientError):
    """Raised when an answer is larger than the SDK reads (`max_response_bytes`, an image's `size_bytes`, ...)."""


class NotCataloganApiError(ClientError, ConfigError):
    """Raised when a URL answered with success but not as the catalogan API does (not a JSON object, a manifest
    line that is not one): `CATALOGAN_API_URL` points at another server, e.g. a proxy's sign-in page (exit 6,
    configuration, in the CLI)."""
