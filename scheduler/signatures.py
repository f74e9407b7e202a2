"""Standard Webhooks signatures (https://www.standardwebhooks.com), with no dependency on the rest of catalogan.

A delivery carries three headers: `webhook-id` (unique per event, the receiver's dedup key),
`webhook-timestamp` (Unix seconds) and `webhook-signature` = `v1,` + base64(HMAC-SHA256(secret,
f"{id}.{timestamp}.{body}")). Several space-separated signatures may be sent during a secret rotation.
A secret written `whsec_<base64>` is used as the decoded bytes (the Standard Webhooks convention);
any other string is used as its UTF-8 bytes.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections.abc import Mapping, Sequence

from scheduler.errors import WebhookVerificationError

SECRET_PREFIX = "whsec_"
SIGNATURE_VERSION = "v1"
DEFAULT_TOLERANCE_SECONDS = 300
MAX_TIMESTAMP_DIGITS = 12  # Unix seconds until the year 33658


def new_secret() -> str:
    """A fresh `whsec_...` secret with 32 random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def _secret_bytes(secret: str) -> bytes:
    if secret.startswith(SECRET_PREFIX):
        try:
            return base64.b64decode(secret[len(SECRET_PREFIX) :], validate=True)
        except ValueError as exc:
            raise WebhookVerificationError("webhook secret: not valid base64 after 'whsec_'") from exc
    return secret.encode()


def sign(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` header value for one delivery."""
    signed = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(_secret_bytes(secret), signed, hashlib.sha256).digest()
    return f"{SIGNATURE_VERSION},{base64.b64encode(digest).decode()}"


def signed_headers(
    secret: str,
    message_id: str,
    body: bytes,
    *,
    timestamp: int | None = None,
    also: Sequence[str] = (),
) -> dict[str, str]:
    """The three Standard Webhooks headers for `body`, stamped now unless `timestamp` is given; each secret in
    `also` (a rotated one, in its grace period) adds its signature, space-separated, as the standard allows."""
    stamp = int(time.time()) if timestamp is None else timestamp
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(stamp),
        "webhook-signature": " ".join(sign(key, message_id, stamp, body) for key in (secret, *also)),
    }


def verify(
    headers: Mapping[str, str],
    body: bytes,
    secret: str,
    *,
    tolerance_seconds: int = DEFAULT_TOLERANCE_SECONDS,
    now: float | None = None,
) -> None:
    """Raise `WebhookVerificationError` unless `body` carries a valid, fresh signature under `secret`.

    Header names are matched case-insensitively. A timestamp more than `tolerance_seconds` away from
    `now` is refused (replay protection); signatures are compared in constant time.
    """
    lowered = {name.lower(): value for name, value in headers.items()}
    message_id = lowered.get("webhook-id")
    stamp_text = lowered.get("webhook-timestamp")
    signatures = lowered.get("webhook-signature")
    if not message_id or not stamp_text or not signatures:
        raise WebhookVerificationError("missing webhook-id, webhook-timestamp or webhook-signature header")
    # ASCII digits only, at most 12 (int() also takes "１２３", "1_000" and 4,000-digit numbers, which overflow
    # the float arithmetic below: a hostile sender's header must be a refusal, never another exception).
    if not (stamp_text.isascii() and stamp_text.isdigit() and len(stamp_text) <= MAX_TIMESTAMP_DIGITS):
        raise WebhookVerificationError(f"webhook-timestamp {stamp_text[:32]!r} is not Unix seconds")
    stamp = int(stamp_text)
    current = time.time() if now is None else now
    if abs(current - stamp) > tolerance_seconds:
        raise WebhookVerificationError(
            f"webhook-timestamp is {int(current - stamp)} s away from now (tolerance {tolerance_seconds} s)"
        )
    expected = sign(secret, message_id, stamp, body).split(",", 1)[1].encode()
    for candidate in signatures.split():
        version, _, value = candidate.partition(",")
        # Compared as bytes: compare_digest refuses str with non-ASCII characters (a TypeError, not a refusal).
        if version == SIGNATURE_VERSION and hmac.compare_digest(value.encode("utf-8", "replace"), expected):
            return
    raise WebhookVerificationError("no webhook-signature matches the body")
