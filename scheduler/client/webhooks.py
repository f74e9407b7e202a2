"""Checking a webhook the API sent, on the receiving side: its Standard Webhooks signature, its freshness, and
its body a JSON object (`verify_webhook`)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from scheduler.errors import WebhookVerificationError
from scheduler.signatures import DEFAULT_TOLERANCE_SECONDS, verify


def verify_webhook(
    headers: Mapping[str, str],
    body: bytes | str,
    secret: str,
    *,
    tolerance_seconds: int = DEFAULT_TOLERANCE_SECONDS,
) -> dict[str, Any]:
    """Check a webhook's Standard Webhooks signature and freshness; return its parsed JSON payload.

    `body` is the raw body as received: bytes (in Starlette or FastAPI, `body = await request.body()`), or text,
    checked as its UTF-8 bytes. Raises `WebhookVerificationError` for a body of another type (such as the
    method `request.body` itself), a missing header, a signature that does not match `body` (e.g. a tampered
    body), a timestamp older or newer than `tolerance_seconds`, or a signed body that is not a JSON object.
    """
    if isinstance(body, str):
        try:
            raw = body.encode()
        except UnicodeEncodeError as exc:
            raise WebhookVerificationError("webhook body: text that is not valid Unicode") from exc
    elif isinstance(body, bytes | bytearray | memoryview):
        raw = bytes(body)
    else:
        raise WebhookVerificationError(
            f"webhook body: the raw body as bytes or str, not {type(body).__name__} (in Starlette or "
            "FastAPI: `body = await request.body()`)"
        )
    verify(headers, raw, secret, tolerance_seconds=tolerance_seconds)
    try:
        payload = json.loads(raw)
    except ValueError as exc:
        raise WebhookVerificationError("webhook body: signed, but not JSON") from exc
    if not isinstance(payload, dict):
        raise WebhookVerificationError("webhook body: signed, but not a JSON object")
    return payload
