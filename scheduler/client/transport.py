"""One HTTP request and its answer, bounded: the request sent without following redirects, the body read as a
stream and refused past a cap (`_iter_capped`, `_read_capped`, `_iter_lines` a line at a time), `Retry-After`
read, and the JSON object an API success holds. Also the SDK's internal errors that steer its retries
(`_OutOfTime`, `_ExpiredLinkError`, `_ResentError`). The retry loop itself is `Connection._send`."""

from __future__ import annotations

import datetime as dt
import email.utils
import json
from collections.abc import Iterator
from typing import Any, NamedTuple

import httpx

from scheduler.client.defaults import API_URL_ENV, ERROR_BODY_BYTES
from scheduler.errors import (
    ApiError,
    ClientError,
    NotCataloganApiError,
    ResponseTooLargeError,
    TransportError,
)


class _ExpiredLinkError(ApiError):
    """Raised inside the SDK when a presigned link answers 403, as S3 does once it expired (`download` lists
    the page again for fresh links)."""


class _ResentError(ApiError):
    """Raised inside the SDK for an error answer to a resend whose earlier attempt may have reached the API
    (a read timeout, a 5xx): that attempt may have done the work the resend found done (409, 404)."""


# Transport errors raised before the request left this machine: a resend cannot repeat anything.
_UNSENT_ERRORS = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


def _retry_after(response: httpx.Response) -> float | None:
    """Seconds from `Retry-After` (delta-seconds or an HTTP date); None when absent or unreadable."""
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=dt.UTC)
        seconds = (when - dt.datetime.now(dt.UTC)).total_seconds()
    return max(0.0, seconds) if seconds == seconds else None  # NaN is unreadable


class _OutOfTime(ClientError):
    """Raised inside the SDK when a retry would sleep past the caller's deadline (`wait` turns it into its
    timeout error)."""


def _iter_capped(response: httpx.Response, limit: int, what: str) -> Iterator[bytes]:
    """The (decoded) body of a streamed `response`, piece by piece: `ResponseTooLargeError` as soon as it passes
    `limit` bytes (or announces more)."""
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise ResponseTooLargeError(f"{what}: the answer is {int(declared)} bytes, over {limit}; refused")
    read = 0
    for piece in response.iter_bytes():
        read += len(piece)
        if read > limit:
            raise ResponseTooLargeError(f"{what}: the answer is over {limit} bytes; refused")
        yield piece


def _read_capped(response: httpx.Response, limit: int, what: str, *, truncate: bool = False) -> bytes:
    """The (decoded) body of a streamed `response`, read piece by piece: `ResponseTooLargeError` as soon as it
    passes `limit` bytes (or announces more), or, with `truncate`, the first `limit` bytes."""
    if not truncate:
        return b"".join(_iter_capped(response, limit, what))
    pieces: list[bytes] = []
    read = 0
    for piece in response.iter_bytes():
        read += len(piece)
        if read > limit:
            pieces.append(piece[: len(piece) - (read - limit)])
            break
        pieces.append(piece)
    return b"".join(pieces)


def _iter_lines(response: httpx.Response, limit: int, max_line_bytes: int, what: str) -> Iterator[bytes]:
    """The lines of a streamed `response` (without their `\n`), each held alone: `ResponseTooLargeError` for a
    line over `max_line_bytes` or a body over `limit`; `TransportError` when the body breaks off."""
    buffer = bytearray()
    try:
        for piece in _iter_capped(response, limit, what):
            buffer += piece
            start = 0
            while (end := buffer.find(b"\n", start)) >= 0:
                if end - start > max_line_bytes:
                    break
                yield bytes(buffer[start:end])
                start = end + 1
            del buffer[:start]
            if len(buffer) > max_line_bytes:
                raise ResponseTooLargeError(f"{what}: a line over {max_line_bytes} bytes; refused")
    except httpx.HTTPError as exc:
        raise TransportError(f"{what}: {exc}") from exc
    if buffer:
        yield bytes(buffer)


def _json_object(response: httpx.Response, what: str) -> dict[str, Any]:
    """The JSON object an API answer holds; `NotCataloganApiError` naming the URL when it holds anything else."""
    try:
        body = json.loads(response.content)
    except ValueError:  # JSONDecodeError, and UnicodeDecodeError for bytes that are not text
        body = None
    if not isinstance(body, dict):
        kind = response.headers.get("content-type", "no content-type")
        raise NotCataloganApiError(
            f"{what}: HTTP {response.status_code} answered {kind}, not the catalogan API's JSON: is "
            f"{API_URL_ENV} (or base_url) the API's own address?"
        )
    return body


# Headers that describe the body as it came over the wire, not the decoded bytes a bounded read returns.
_WIRE_HEADERS = frozenset({"content-encoding", "content-length", "transfer-encoding"})


def _send_capped(
    http: httpx.Client,
    method: str,
    url: str,
    limit: int,
    what: str,
    *,
    error_limit: int = ERROR_BODY_BYTES,
    stream: bool = False,
    **kwargs: Any,
) -> httpx.Response:
    """One request whose answer is read with `_read_capped` (an error answer: its first `error_limit` bytes),
    returned as a complete `httpx.Response`; with `stream`, a success is returned unread and open (the caller
    reads and closes it). Never follows a redirect."""
    request = http.build_request(method, url, **kwargs)
    response = http.send(request, stream=True, follow_redirects=False)
    if stream and response.status_code < 300:
        return response
    try:
        if response.status_code >= 300:
            data = _read_capped(response, error_limit, what, truncate=True)
        else:
            data = _read_capped(response, limit, what)
    finally:
        response.close()
    headers = [(name, value) for name, value in response.headers.multi_items() if name not in _WIRE_HEADERS]
    return httpx.Response(response.status_code, headers=headers, content=data, request=request)


class _Answer(NamedTuple):
    """The last answer of a request sent with retries."""

    response: httpx.Response
    resent: bool  # an earlier attempt may have reached the server and acted (its answer lost, or a 5xx)
