"""`verify_webhook` in a receiver: the raw body as bytes or text, and anything else a 401, never a crash.

The receiver is a real Starlette app (FastAPI) written as docs/api.md shows it, driven by its TestClient.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI, Request, Response
from fastapi.testclient import TestClient

from scheduler.client import verify_webhook
from scheduler.errors import WebhookVerificationError
from scheduler.signatures import new_secret, signed_headers

DOCS = Path(__file__).resolve().parents[2] / "docs" / "api.md"
EVENT = {"type": "job.completed", "data": {"job_id": "j1", "status": "succeeded", "sku": "Größe-42"}}


def receiver(secret: str, body_of: Callable[[Request], Any]) -> tuple[TestClient, list[dict[str, Any]]]:
    """A receiver that verifies what `body_of(request)` gives (awaited when it is awaitable): 204 and the event
    recorded, or 401 with the error's message."""
    app = FastAPI()
    events: list[dict[str, Any]] = []

    @app.post("/hooks")
    async def hook(request: Request) -> Response:
        body = body_of(request)
        if hasattr(body, "__await__"):
            body = await body
        try:
            events.append(verify_webhook(request.headers, body, secret))
        except WebhookVerificationError as exc:
            return Response(str(exc), status_code=401)
        return Response(status_code=204)

    return TestClient(app, raise_server_exceptions=False), events


def delivery(secret: str) -> tuple[bytes, dict[str, str]]:
    """A signed `job.completed` body (UTF-8, with a non-ASCII SKU) and its headers."""
    body = json.dumps(EVENT, ensure_ascii=False).encode()
    return body, signed_headers(secret, "msg_1", body)


def test_the_documented_receiver_verifies_a_delivery() -> None:
    """Given a receiver that does what docs/api.md shows (`body = await request.body()`), when a signed delivery
    arrives, then it verifies and the event comes out (before: the doc passed `request.body`, the method)."""
    snippet = re.search(r"```python\n(.*?verify_webhook\(.*?)```", DOCS.read_text(), re.S)
    assert snippet is not None and "body = await request.body()" in snippet.group(1)
    assert "verify_webhook(request.headers, body, secret)" in snippet.group(1)
    secret = new_secret()
    app, events = receiver(secret, lambda request: request.body())
    body, headers = delivery(secret)
    assert app.post("/hooks", content=body, headers=headers).status_code == 204
    assert events == [EVENT]


def test_a_body_passed_as_text_is_checked_as_its_utf8_bytes() -> None:
    """Given a framework that hands the body over as text, when verified, then the signature (made over the
    UTF-8 bytes) matches (before: TypeError, bytes + str); a changed character still fails."""
    secret = new_secret()
    body, headers = delivery(secret)
    assert verify_webhook(headers, body.decode(), secret) == EVENT
    with pytest.raises(WebhookVerificationError):
        verify_webhook(headers, body.decode().replace("42", "43"), secret)


@pytest.mark.parametrize(
    "body_of",
    [lambda request: request.body, lambda request: None, lambda request: {"type": "job.completed"}],
    ids=["the-method", "none", "parsed-json"],
)
def test_a_body_that_is_not_bytes_or_text_is_a_401_not_a_crash(body_of: Callable[[Request], Any]) -> None:
    """Given a receiver that passes the method `request.body` (the old doc's mistake), None or the parsed JSON,
    when a signed delivery arrives, then verify_webhook raises WebhookVerificationError, so the receiver
    answers 401 and says to await `request.body()` (before: TypeError, a 500 the sender retried for days)."""
    secret = new_secret()
    app, events = receiver(secret, body_of)
    body, headers = delivery(secret)
    answer = app.post("/hooks", content=body, headers=headers)
    assert answer.status_code == 401 and "await request.body()" in answer.text
    assert events == []
