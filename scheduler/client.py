"""The Python SDK for the catalogan HTTP API (httpx, synchronous).

    from scheduler.client import Client

    with Client() as client:  # CATALOGAN_API_URL and CATALOGAN_API_KEY from the environment
        job = client.submit_job([{"category": "sneaker", "count": 4, "sku": "SKU-1"}], seed=7)
        job = client.wait(job, progress=lambda j: print(f"{j.progress:.0%}"))
        paths = client.download(job, "out/")

The SDK needs httpx and pydantic only (`pip install catalogan`, without the `server` extra: no torch, no
SQLAlchemy). `download` works page by page (list a page of images, fetch its files, then list the next), so a
presigned link is used minutes after it was issued, never hours, and a link that expired anyway (403) has its
page listed again once for fresh ones; it fetches in parallel threads, skips files already on disk whose sha256
matches (so an interrupted download resumes), and unpacks tar jobs: their image rows point at a WebDataset
shard, which is fetched and indexed once, each member checked against the image's sha256, and let go once the
listing has passed its last image. Every path segment the server sends is checked (one safe key segment, and
the file inside the target folder) before anything of its page is fetched or written.

Every call retries on 5xx, 429 and connection failures with exponential backoff, honouring `Retry-After` (seconds
or an HTTP date, at most `MAX_RETRY_AFTER_SECONDS`); so does every fetch of an image or shard (S3's 503 SlowDown,
a reset connection). A retry or delete whose first attempt may have reached the API (its answer lost) and whose
resend finds the work done (409 nothing to retry, 404 gone) is confirmed with a GET and reported done.
Redirects are never followed (the API key stays with the API's own address). Answers are read as streams and
refused past a cap: `max_response_bytes` for API answers (a problem's body too, so a 422 naming a thousand
fields keeps them), `max_manifest_bytes` for a manifest (`iter_manifest_rows` and `download_manifest` stream it,
a line at most `MAX_MANIFEST_LINE_BYTES`), an image's own `size_bytes` for its bytes (`max_download_bytes` when
the size is not known, e.g. a tar shard), so a broken or hostile peer cannot make the SDK hold an unbounded body.
`wait` polls with a growing pause (`poll_seconds` up to `max_poll_seconds`), keeps waiting through 429s, and
never sleeps past its `timeout_seconds`.
`submit_job` always sends an `Idempotency-Key` (one is generated when none is given), so a retried submit
never creates a second job. Errors: `ApiError` (the API answered with a problem; `.status`, `.problem`),
`TransportError` (the API could not be reached), `NotCataloganApiError` (a 2xx answer that is not the API's
JSON: the URL points at something else), `WebhookVerificationError` (from `verify_webhook`) —
all `scheduler.errors.ClientError`/`SchedulerError`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import email.utils
import hashlib
import io
import ipaddress
import json
import os
import re
import tarfile
import time
import uuid
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple
from urllib.parse import unquote, urlsplit

import httpx

from db.errors import ConfigError, InvalidKeyError
from db.storage.keys import validate_key_segment
from scheduler.errors import (
    ApiError,
    ClientError,
    ResponseTooLargeError,
    TransportError,
    WebhookVerificationError,
)
from scheduler.signatures import DEFAULT_TOLERANCE_SECONDS, verify

__all__ = [
    "Client",
    "Estimate",
    "Image",
    "Job",
    "JobPage",
    "Model",
    "NotCataloganApiError",
    "PreviewImage",
    "spreadsheet_safe",
    "verify_webhook",
]

DEFAULT_API_URL = "http://127.0.0.1:8000"
API_URL_ENV = "CATALOGAN_API_URL"
API_KEY_ENV = "CATALOGAN_API_KEY"
DEFAULT_DOWNLOAD_THREADS = 8
SHARD_SUFFIX = ".tar"  # tar jobs: an image row's key is the WebDataset shard that holds its PNG
DEFAULT_TIMEOUT_SECONDS = 30.0
DEFAULT_MAX_RETRIES = 5
DEFAULT_BACKOFF_SECONDS = 0.5
MAX_BACKOFF_SECONDS = 30.0
MAX_RETRY_AFTER_SECONDS = 120.0  # a longer Retry-After (or HTTP date) is waited this long, then tried again
DEFAULT_MAX_POLL_SECONDS = 15.0  # `wait`'s pause grows to this (or stays at a longer `poll_seconds`)
POLL_BACKOFF_FACTOR = 1.5  # `wait`'s pause is multiplied by this after each poll
DEFAULT_MAX_RESPONSE_BYTES = 16 * 1024 * 1024  # an API answer (a page of 1,000 images is about 1 MiB)
DEFAULT_MAX_MANIFEST_BYTES = 1024 * 1024 * 1024  # a manifest (JSONL: about 350 bytes per image)
DEFAULT_MAX_DOWNLOAD_BYTES = 1024 * 1024 * 1024  # a presigned object whose size the listing does not give
ERROR_BODY_BYTES = 64 * 1024  # of an object store's error answer, this much is read (API: max_response_bytes)
MAX_MANIFEST_LINE_BYTES = 1024 * 1024  # one JSONL manifest row (about 350 bytes; a long error message more)
MANIFEST_FORMATS = ("jsonl", "parquet")
DOWNLOAD_PAGE_SIZE = 200  # images `download` lists, fetches and lets go of at a time
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
TERMINAL_STATUSES = frozenset({"succeeded", "completed_with_failures", "failed", "cancelled"})
# A job in one of these after a retry answered 409 was not retried (a retried one goes back to the queue).
RETRY_REFUSED_STATUSES = frozenset({"completed_with_failures", "failed", "cancelling", "cancelled"})


def _time(value: str | None) -> dt.datetime | None:
    return dt.datetime.fromisoformat(value) if value else None


@dataclass(frozen=True, slots=True)
class Job:
    """A job as the API reported it when this object was made."""

    id: str
    status: str
    model_name: str | None
    model_version: int | None
    seed: int
    images_total: int
    images_done: int
    images_failed: int
    images_rejected: int
    chunks_total: int
    chunks_finished: int
    progress: float
    eta_seconds: float | None
    cancel_requested: bool
    webhook_url: str | None
    error: str | None
    created_at: dt.datetime | None
    started_at: dt.datetime | None
    finished_at: dt.datetime | None
    replayed: bool = False
    items_skipped_existing: int = 0  # items an earlier job already delivered (client_item_id)
    images_skipped_existing: int = 0
    metadata: Mapping[str, str] = field(default_factory=dict)  # the labels given at submit
    retention_days: int | None = None  # days kept once finished (None: until deleted)
    expires_at: dt.datetime | None = None  # when its objects and rows are deleted (None while it runs)
    queue: str = "bulk"  # the queue (priority) its chunks go to
    webhook_events: Sequence[str] | None = None  # the events sent for it (None = every event)
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def is_terminal(self) -> bool:
        """True once the job succeeded, completed with failures, failed or was cancelled."""
        return self.status in TERMINAL_STATUSES

    @property
    def completed_with_failures(self) -> bool:
        """True when some images failed and the others were delivered (`retry_job` runs the failed ones)."""
        return self.status == "completed_with_failures"

    @classmethod
    def from_json(cls, body: Mapping[str, Any], *, replayed: bool = False) -> Job:
        """Build from a `JobPublic` body."""
        counts = body.get("counts", {})
        model = body.get("model") or {}
        return cls(
            id=body["id"],
            status=body["status"],
            model_name=model.get("name"),
            model_version=model.get("version"),
            seed=body["seed"],
            images_total=counts.get("images_total", 0),
            images_done=counts.get("images_done", 0),
            images_failed=counts.get("images_failed", 0),
            images_rejected=counts.get("images_rejected", 0),
            chunks_total=counts.get("chunks_total", 0),
            chunks_finished=counts.get("chunks_finished", 0),
            items_skipped_existing=counts.get("items_skipped_existing", 0),
            images_skipped_existing=counts.get("images_skipped_existing", 0),
            progress=body.get("progress", 0.0),
            eta_seconds=body.get("eta_seconds"),
            cancel_requested=body.get("cancel_requested", False),
            webhook_url=body.get("webhook_url"),
            error=body.get("error"),
            created_at=_time(body.get("created_at")),
            started_at=_time(body.get("started_at")),
            finished_at=_time(body.get("finished_at")),
            replayed=replayed,
            metadata=dict(body.get("metadata") or {}),
            retention_days=body.get("retention_days"),
            expires_at=_time(body.get("expires_at")),
            queue=body.get("queue", "bulk"),
            webhook_events=body.get("webhook_events"),
            raw=dict(body),
        )


@dataclass(frozen=True, slots=True)
class JobPage:
    """One page of jobs and the cursor of the next one (None at the end)."""

    jobs: list[Job]
    next_cursor: str | None


@dataclass(frozen=True, slots=True)
class Image:
    """One image of a job, with a presigned `url` valid until `url_expires_at`."""

    index: int
    category: str
    sku: str | None
    status: str
    key: str | None
    sha256: str | None
    size_bytes: int | None
    url: str | None
    url_expires_at: dt.datetime | None
    error: str | None

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> Image:
        """Build from an `ImagePublic` body."""
        return cls(
            index=body["index"],
            category=body["category"],
            sku=body.get("sku"),
            status=body["status"],
            key=body.get("key"),
            sha256=body.get("sha256"),
            size_bytes=body.get("size_bytes"),
            url=body.get("url"),
            url_expires_at=_time(body.get("url_expires_at")),
            error=body.get("error"),
        )


@dataclass(frozen=True, slots=True)
class Estimate:
    """A dry-run estimate of a job."""

    images: int
    chunks: int
    seconds: float
    images_per_second: float
    throughput_basis: str
    quota_cost: int | None = None  # what the job would charge to the daily quota (images × (1 + max_redraws))
    model_name: str | None = None  # the model version the job would run
    model_version: int | None = None

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> Estimate:
        """Build from an `EstimatePublic` body."""
        model = body.get("model") or {}
        return cls(
            images=body["images"],
            chunks=body["chunks"],
            seconds=body["seconds"],
            images_per_second=body["images_per_second"],
            throughput_basis=body["throughput_basis"],
            quota_cost=body.get("quota_cost"),
            model_name=model.get("name"),
            model_version=model.get("version"),
        )


@dataclass(frozen=True, slots=True)
class Model:
    """A registered model version."""

    name: str
    version: int
    status: str
    categories: list[Any]
    metrics: dict[str, Any]  # the summary GET /v1/models documents (fid_fm, cas, ...; None: not measured)


@dataclass(frozen=True, slots=True)
class PreviewImage:
    """One preview image (PNG bytes)."""

    index: int
    category: str
    sha256: str
    png: bytes


def _present(values: Mapping[str, Any]) -> dict[str, Any]:
    """The entries that are not None (fields left out of a request body)."""
    return {name: value for name, value in values.items() if value is not None}


def _is_loopback(host: str | None) -> bool:
    """True for localhost and loopback addresses (an API on this machine)."""
    if host is None:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


JOB_ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")  # what a job id can be (the API's are 32 hex digits)
API_KEY_PATTERN = re.compile(r"[!-~]+")  # printable ASCII, no space: what `catalogan keys create` prints


class JobIdError(ClientError, ValueError):
    """Raised for a job id that cannot be one (bad input: exit 2 in the CLI)."""


class NotCataloganApiError(ClientError, ConfigError):
    """Raised when a URL answered with success but not as the catalogan API does (not a JSON object, a manifest
    line that is not one): `CATALOGAN_API_URL` points at another server, e.g. a proxy's sign-in page (exit 6,
    configuration, in the CLI)."""


class _ExpiredLinkError(ApiError):
    """Raised inside the SDK when a presigned link answers 403, as S3 does once it expired (`download` lists
    the page again for fresh links)."""


class _ResentError(ApiError):
    """Raised inside the SDK for an error answer to a resend whose earlier attempt may have reached the API
    (a read timeout, a 5xx): that attempt may have done the work the resend found done (409, 404)."""


# Transport errors raised before the request left this machine: a resend cannot repeat anything.
_UNSENT_ERRORS = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


def _job_id(job: Job | str) -> str:
    """The job's id, checked before it goes into a URL path (`abc/`, `''` or `../x` would name another route)."""
    value = job.id if isinstance(job, Job) else job
    if not isinstance(value, str) or not JOB_ID_PATTERN.fullmatch(value):
        raise JobIdError(f"job id {value!r}: must be 1 to 64 letters, digits, '_' or '-' (a job's `id`)")
    return value


def check_api_key(api_key: str) -> str:
    """The key without surrounding whitespace (a trailing newline from a file or `echo`); `ClientError` naming
    the variable, never echoing the key, when it holds anything but printable ASCII."""
    key = api_key.strip()
    if not API_KEY_PATTERN.fullmatch(key):
        raise ClientError(
            f"{API_KEY_ENV}: the API key must be printable ASCII without spaces (as `catalogan keys create` "
            "prints it); check for a stray character"
        )
    return key


def check_api_url(url: str, name: str = API_URL_ENV) -> str:
    """`url` when it is http(s)://host[:port][/path]; `ClientError` naming `name` (the variable or argument it came
    from) and the rule otherwise, never the URL (it may carry credentials). Checked before any request: `notaurl`
    became "GET notaurl/v1/jobs: ..." (an outage, exit 5) and `http://[::1` urllib's "Invalid IPv6 URL"."""
    rule = f"{name}: must be http(s)://host[:port][/path], e.g. {DEFAULT_API_URL}"
    try:
        parts = urlsplit(url)
        port = parts.port
        httpx.URL(url)
    except (ValueError, httpx.InvalidURL):
        raise ClientError(f"{rule} (not a URL)") from None
    if parts.scheme not in ("http", "https") or not parts.hostname or port == 0:
        raise ClientError(rule)
    if parts.username is not None or parts.password is not None or parts.query or parts.fragment:
        raise ClientError(f"{rule}, without credentials, query or fragment")
    return url


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


class Client:
    """A connection to one catalogan API with one API key. Use as a context manager or call `close()`.

    `base_url` defaults to `CATALOGAN_API_URL` (else http://127.0.0.1:8000), `api_key` to `CATALOGAN_API_KEY`;
    without a key `ClientError` is raised.
    """

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
        max_retries: int = DEFAULT_MAX_RETRIES,
        backoff_seconds: float = DEFAULT_BACKOFF_SECONDS,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
        allow_file_urls: bool | None = None,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        max_manifest_bytes: int = DEFAULT_MAX_MANIFEST_BYTES,
        max_download_bytes: int = DEFAULT_MAX_DOWNLOAD_BYTES,
    ) -> None:
        url_source = "base_url" if base_url else API_URL_ENV
        base_url = base_url or os.environ.get(API_URL_ENV) or DEFAULT_API_URL
        api_key = api_key or os.environ.get(API_KEY_ENV)
        if not api_key:
            raise ClientError(
                f"no API key: pass api_key or set {API_KEY_ENV} (create one with `catalogan keys create`)"
            )
        api_key = check_api_key(api_key)
        check_api_url(base_url, url_source)
        self.base_url = base_url.rstrip("/")
        # A `file://` image URL is what an API on a local folder store answers; read one only from an API on
        # this machine, so a remote (or hostile) server cannot make `download` copy local files.
        self.allow_file_urls = (
            _is_loopback(urlsplit(self.base_url).hostname) if allow_file_urls is None else allow_file_urls
        )
        self.max_retries = max_retries
        self.backoff_seconds = backoff_seconds
        self.max_response_bytes = max_response_bytes
        self.max_manifest_bytes = max_manifest_bytes
        self.max_download_bytes = max_download_bytes
        self._sleep = sleep
        self._http = httpx.Client(
            base_url=self.base_url,
            headers={"Authorization": f"Bearer {api_key}", "User-Agent": "catalogan-sdk/1"},
            timeout=timeout_seconds,
            transport=transport,
        )
        # Presigned URLs are fetched without our Authorization header (S3 would refuse it).
        self._downloads = httpx.Client(timeout=timeout_seconds, transport=transport)

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the HTTP connections."""
        self._http.close()
        self._downloads.close()

    # -- plumbing ---------------------------------------------------------------------------------

    def _request(
        self,
        method: str,
        path: str,
        *,
        limit: int | None = None,
        deadline: float | None = None,
        patient: bool = False,
        stream: bool = False,
        **kwargs: Any,
    ) -> httpx.Response:
        """One API call with retries; the answer read up to `limit` bytes (`max_response_bytes`), or with
        `stream` returned open for the caller to read (and close) when it is a success.

        No retry sleeps past `deadline` (a `time.monotonic()` value): the last error is raised instead. With
        `patient`, 429 answers do not use up `max_retries` (the API asked us to slow down, not to give up).
        An error answer is read up to `max_response_bytes`, so a problem listing many fields keeps them all.
        """
        what = f"{method} {self.base_url}{path}"
        response, resent = self._send(
            self._http,
            method,
            path,
            what,
            limit=limit or self.max_response_bytes,
            error_limit=self.max_response_bytes,
            deadline=deadline,
            patient=patient,
            stream=stream,
            **kwargs,
        )
        if response.status_code >= 400:
            raise (_ResentError if resent else ApiError)(response.status_code, self._problem(response))
        if response.status_code >= 300:  # the API never redirects: the URL is not the API's own address
            location = response.headers.get("location", "?")
            raise ApiError(
                response.status_code,
                {
                    "status": response.status_code,
                    "detail": f"{method} {self.base_url}{path} was redirected to {location}: set "
                    f"{API_URL_ENV} to the API's own address (https:// where it serves TLS)",
                },
            )
        return response

    def _call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        """`_request`, its answer parsed as the JSON object every API success is (`NotCataloganApiError`
        naming the URL otherwise: a proxy's or web server's page)."""
        return _json_object(self._request(method, path, **kwargs), f"{method} {self.base_url}{path}")

    def _send(
        self,
        http: httpx.Client,
        method: str,
        url: str,
        what: str,
        *,
        limit: int,
        error_limit: int,
        deadline: float | None = None,
        patient: bool = False,
        stream: bool = False,
        **kwargs: Any,
    ) -> _Answer:
        """`_send_capped` again after a transport error, 5xx or 429, with exponential backoff (`Retry-After`
        when given), at most `max_retries` times; the last answer, whatever its status, and whether an earlier
        attempt may have reached the server."""
        attempt = step = 0
        resent = False
        while True:
            try:
                response = _send_capped(
                    http, method, url, limit, what, error_limit=error_limit, stream=stream, **kwargs
                )
            except httpx.TransportError as exc:
                delay = self._delay(step, None)
                if attempt < self.max_retries and not self._time_left(delay, deadline):
                    raise _OutOfTime(f"{what}: {exc}") from exc
                if attempt >= self.max_retries:
                    raise TransportError(f"{what}: {exc}") from exc
                resent = resent or not isinstance(exc, _UNSENT_ERRORS)
                self._sleep(delay)
                attempt, step = attempt + 1, step + 1
                continue
            except httpx.HTTPError as exc:  # e.g. a body that does not decode: no use sending it again
                raise TransportError(f"{what}: {exc}") from exc
            if response.status_code in RETRY_STATUSES:
                counted = not (patient and response.status_code == 429)
                delay = self._delay(step, _retry_after(response))
                if attempt < self.max_retries or not counted:
                    if not self._time_left(delay, deadline):
                        raise _OutOfTime(f"{what}: HTTP {response.status_code}, next try in {delay:g} s")
                    resent = resent or response.status_code != 429  # a 429 refused the request unread
                    self._sleep(delay)
                    attempt, step = attempt + counted, step + 1
                    continue
            return _Answer(response, resent)

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, MAX_RETRY_AFTER_SECONDS)
        return min(MAX_BACKOFF_SECONDS, self.backoff_seconds * 2**attempt)

    @staticmethod
    def _time_left(delay: float, deadline: float | None) -> bool:
        """True unless sleeping `delay` would pass `deadline`."""
        return deadline is None or time.monotonic() + delay < deadline

    @staticmethod
    def _problem(response: httpx.Response) -> dict[str, Any]:
        try:
            body = response.json()
        except ValueError:
            return {"status": response.status_code, "detail": response.text[:500]}
        return body if isinstance(body, dict) else {"status": response.status_code, "detail": str(body)}

    # -- jobs -------------------------------------------------------------------------------------

    def submit_job(
        self,
        items: Sequence[Mapping[str, Any]] | None = None,
        *,
        model: str | None = None,
        seed: int | None = None,
        manifest: str | Path | None = None,
        manifest_uri: str | None = None,
        webhook_url: str | None = None,
        chunk_size: int | None = None,
        idempotency_key: str | None = None,
        output_format: str | None = None,
        quality_gate: Mapping[str, Any] | None = None,
        truncation: float | None = None,
        metadata: Mapping[str, str] | None = None,
        retention_days: int | None = None,
        queue: str | None = None,
        webhook_events: Sequence[str] | None = None,
    ) -> Job:
        """Submit a job from inline `items`, an uploaded `manifest` file (CSV, JSONL, Parquet) or an `s3://` URI.

        `output_format`: png (default), webp or tar (WebDataset shards); `quality_gate`:
        `{"min_confidence": 0.6, "max_redraws": 3}`; `truncation`: ψ in 0.3..1.0 (1.0, the default, is off;
        lower gives more typical, less varied images); `metadata`: your own labels (at most 16 keys of
        [a-z0-9_.-], string values), returned with the job and filterable in `list_jobs`; `queue`: interactive,
        bulk (default) or backfill, up to the tenant's allowance; `webhook_events`: only these events are sent
        (e.g. `["job.completed", "job.failed"]`; None = every event). Items may carry `client_item_id`: with a `seed`, items
        already delivered with the same settings are skipped (`Job.items_skipped_existing` says how many).
        `retention_days`: days the job is kept once finished (default and maximum: the operator's); then its
        objects and rows are deleted (`Job.expires_at`).

        Sends `Idempotency-Key` (a fresh one unless given): retrying the same call returns the same job,
        marked `replayed=True`.
        """
        spec: dict[str, Any] = {
            name: value
            for name, value in {
                "model": model,
                "items": list(items) if items is not None else None,
                "seed": seed,
                "manifest_uri": manifest_uri,
                "webhook_url": webhook_url,
                "chunk_size": chunk_size,
                "output_format": output_format,
                "quality_gate": dict(quality_gate) if quality_gate is not None else None,
                "truncation": truncation,
                "metadata": dict(metadata) if metadata is not None else None,
                "retention_days": retention_days,
                "queue": queue,
                "webhook_events": list(webhook_events) if webhook_events is not None else None,
            }.items()
            if value is not None
        }
        key = idempotency_key or uuid.uuid4().hex
        if manifest is None:
            return self._submit_json(spec, key)
        path = Path(manifest)
        files = {"file": (path.name, path.read_bytes(), "application/octet-stream")}
        data = {"spec": json.dumps(spec)} if spec else {}
        response = self._request("POST", "/v1/jobs", files=files, data=data, headers={"Idempotency-Key": key})
        replayed = response.headers.get("idempotent-replayed", "").lower() == "true"
        return Job.from_json(_json_object(response, f"POST {self.base_url}/v1/jobs"), replayed=replayed)

    def submit_variations(
        self,
        source: Job | str,
        index: int,
        *,
        count: int,
        strength: float,
        seed: int | None = None,
        truncation: float | None = None,
        webhook_url: str | None = None,
        idempotency_key: str | None = None,
        **options: Any,
    ) -> Job:
        """A job of `count` images near image `index` of your job `source`: same model version and category.

        `strength` 0 gives the source image's own pixels, 1 an unrelated image of its category; `truncation`
        defaults to the source's ψ. Other `POST /v1/jobs` fields (`output_format`, `chunk_size`,
        `quality_gate`) pass through `options`.
        """
        variation = {
            "source": {"job_id": _job_id(source), "index": index},
            "strength": strength,
            "count": count,
        }
        spec = {"variation": variation, "seed": seed, "truncation": truncation, "webhook_url": webhook_url}
        return self._submit_json({**_present(spec), **options}, idempotency_key or uuid.uuid4().hex)

    def submit_interpolation(
        self,
        start: tuple[Job | str, int],
        end: tuple[Job | str, int],
        *,
        frames: int,
        webhook_url: str | None = None,
        idempotency_key: str | None = None,
        **options: Any,
    ) -> Job:
        """A job of `frames` images on the latent path between two of your images, given as (job, index).

        Frame 0 is `start`'s pixels and the last frame `end`'s; both must come from one model version and be of
        one category. Other `POST /v1/jobs` fields pass through `options`.
        """
        interpolation = {
            "start": {"job_id": _job_id(start[0]), "index": start[1]},
            "end": {"job_id": _job_id(end[0]), "index": end[1]},
            "frames": frames,
        }
        spec = {"interpolation": interpolation, "webhook_url": webhook_url}
        return self._submit_json({**_present(spec), **options}, idempotency_key or uuid.uuid4().hex)

    def _submit_json(self, spec: Mapping[str, Any], idempotency_key: str) -> Job:
        response = self._request(
            "POST", "/v1/jobs", json=dict(spec), headers={"Idempotency-Key": idempotency_key}
        )
        replayed = response.headers.get("idempotent-replayed", "").lower() == "true"
        return Job.from_json(_json_object(response, f"POST {self.base_url}/v1/jobs"), replayed=replayed)

    def get_job(self, job: Job | str) -> Job:
        """The job's current status and counts."""
        return Job.from_json(self._call("GET", f"/v1/jobs/{_job_id(job)}"))

    def list_jobs(
        self,
        *,
        status: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> JobPage:
        """One page of the tenant's jobs, newest first; `metadata`: only jobs carrying all these labels."""
        params: dict[str, Any] = {"limit": limit}
        if status:
            params["status"] = status
        if metadata:
            params["metadata"] = [f"{key}={value}" for key, value in metadata.items()]
        if cursor:
            params["cursor"] = cursor
        body = self._call("GET", "/v1/jobs", params=params)
        return JobPage([Job.from_json(item) for item in body["data"]], body.get("next_cursor"))

    def iter_jobs(
        self, *, status: str | None = None, page_size: int = 100, metadata: Mapping[str, str] | None = None
    ) -> Iterator[Job]:
        """Every job of the tenant (carrying all `metadata` labels when given), newest first, paged as needed."""
        cursor: str | None = None
        while True:
            page = self.list_jobs(status=status, limit=page_size, cursor=cursor, metadata=metadata)
            yield from page.jobs
            if not page.next_cursor:
                return
            cursor = page.next_cursor

    def wait(
        self,
        job: Job | str,
        *,
        progress: Callable[[Job], None] | None = None,
        poll_seconds: float = 1.0,
        max_poll_seconds: float = DEFAULT_MAX_POLL_SECONDS,
        timeout_seconds: float | None = None,
    ) -> Job:
        """Poll until the job is finished and return it; `progress` is called with every poll's result.

        The pause between polls starts at `poll_seconds` and grows by half each poll up to `max_poll_seconds`
        (an hour-long job costs about 250 requests, not 3,600). A 429 answer is waited out (its `Retry-After`,
        at most `MAX_RETRY_AFTER_SECONDS`) however often it comes; other errors are raised after the usual
        retries. Raises `ClientError` when `timeout_seconds` pass first, without sleeping past them. A failed,
        completed_with_failures or cancelled job is returned, not raised: check `job.status`
        (`job.completed_with_failures`, `job.images_failed`).
        """
        path = f"/v1/jobs/{_job_id(job)}"
        deadline = None if timeout_seconds is None else time.monotonic() + timeout_seconds
        interval = poll_seconds
        while True:
            try:
                current = Job.from_json(self._call("GET", path, deadline=deadline, patient=True))
            except _OutOfTime as exc:
                raise ClientError(
                    f"job {_job_id(job)} not finished after {timeout_seconds} s ({exc})"
                ) from exc
            if progress is not None:
                progress(current)
            if current.is_terminal:
                return current
            pause = interval
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ClientError(f"job {current.id} still {current.status} after {timeout_seconds} s")
                pause = min(pause, left)
            self._sleep(pause)
            interval = min(max(max_poll_seconds, poll_seconds), interval * POLL_BACKOFF_FACTOR)

    def cancel_job(self, job: Job | str) -> Job:
        """Ask the job to stop; finished images stay."""
        return Job.from_json(self._call("POST", f"/v1/jobs/{_job_id(job)}/cancel"))

    def delete_job(self, job: Job | str) -> None:
        """Delete a finished job: its images, manifests and shards, then the job itself (an unfinished job is an
        `ApiError` 409: cancel it first).

        When an attempt may have reached the API and lost its answer (a read timeout, a 5xx), the resend finds
        the job gone (404); a GET that also answers 404 confirms it, and the delete is reported done.
        """
        path = f"/v1/jobs/{_job_id(job)}"
        try:
            self._request("DELETE", path)
        except _ResentError as exc:
            if exc.status != 404:
                raise
            try:
                self._request("GET", path)
            except ApiError as lookup:
                if lookup.status == 404:
                    return
                raise
            raise  # the job is there: the 404 was about something else

    def retry_job(self, job: Job | str) -> Job:
        """Run the job's failed images again (its quarantined chunks).

        When an attempt may have reached the API and lost its answer (a read timeout, a 5xx), the resend finds
        nothing to retry (409); the job as a GET shows it then tells: back in the queue (or already through it)
        is the retry done, and that job is returned; still failed, or cancelled, raises the 409.
        """
        path = f"/v1/jobs/{_job_id(job)}"
        try:
            return Job.from_json(self._call("POST", f"{path}/retry"))
        except _ResentError as exc:
            if exc.status != 409:
                raise
            current = Job.from_json(self._call("GET", path))
            if current.status in RETRY_REFUSED_STATUSES:
                raise
            return current

    def estimate_job(
        self,
        items: Sequence[Mapping[str, Any]] | None = None,
        *,
        model: str | None = None,
        chunk_size: int | None = None,
        quality_gate: Mapping[str, Any] | None = None,
        queue: str | None = None,
        manifest_uri: str | None = None,
        output_format: str | None = None,
    ) -> Estimate:
        """What a job of `items` (or of the `s3://` manifest at `manifest_uri`) would take, without creating it:
        images, chunks, seconds, and `quota_cost` (what it would charge to the daily quota: with a
        `quality_gate`, each image's worst-case redraws too). The other arguments are `submit_job`'s."""
        spec = _present(
            {
                "items": list(items) if items is not None else None,
                "model": model or None,
                "chunk_size": chunk_size or None,
                "quality_gate": dict(quality_gate) if quality_gate is not None else None,
                "queue": queue,
                "manifest_uri": manifest_uri,
                "output_format": output_format,
            }
        )
        return Estimate.from_json(self._call("POST", "/v1/jobs:estimate", json=spec))

    # -- images and manifests -----------------------------------------------------------------------

    def iter_images(
        self, job: Job | str, *, page_size: int = 200, review: str | None = None
    ) -> Iterator[Image]:
        """Every image of the job in index order, with fresh presigned URLs; with `review` ("approved",
        "rejected" or "pending"), only the delivered images in that review state."""
        job_id = _job_id(job)
        cursor: str | None = None
        while True:
            images, cursor = self._images_page(job_id, cursor, page_size, review)
            yield from images
            if not cursor:
                return

    def _images_page(
        self, job_id: str, cursor: str | None, limit: int, review: str | None = None
    ) -> tuple[list[Image], str | None]:
        """One page of the job's images after `cursor`, with presigned URLs issued now, and the next page's
        cursor (None after the last page)."""
        params: dict[str, Any] = {"limit": limit}
        if review is not None:
            params["review"] = review
        if cursor:
            params["cursor"] = cursor
        body = self._call("GET", f"/v1/jobs/{job_id}/images", params=params)
        return [Image.from_json(item) for item in body["data"]], body.get("next_cursor")

    def _get_bytes(self, url: str, what: str, size_bytes: int | None = None) -> bytes:
        """The bytes behind a presigned (or file://) URL, fetched without our Authorization header: at most
        `size_bytes` (the size the API listed; `ResponseTooLargeError` past it), else `max_download_bytes`.

        Retried as an API call is (a 5xx such as S3's 503 SlowDown, a 429, a reset or timed-out connection),
        at most `max_retries` times; a 403, what S3 answers once a link expired, is `_ExpiredLinkError`.
        """
        limit = size_bytes if size_bytes is not None and size_bytes >= 0 else self.max_download_bytes
        too_large = f"{what}: larger than the {limit} bytes the API listed; refused"
        parts = urlsplit(url)
        if parts.scheme == "file":
            if not self.allow_file_urls:
                raise ClientError(
                    f"{what}: the API at {self.base_url} answered a file:// URL; local files are read only "
                    "for an API on this machine (Client(allow_file_urls=True) to allow it)"
                )
            with Path(unquote(parts.path)).open("rb") as handle:
                data = handle.read(limit + 1)
            if len(data) > limit:
                raise ResponseTooLargeError(too_large)
            return data
        if parts.scheme not in ("http", "https"):
            raise ClientError(f"{what}: unsupported URL scheme {parts.scheme!r}")
        try:
            response, _ = self._send(
                self._downloads, "GET", url, what, limit=limit, error_limit=ERROR_BODY_BYTES
            )
        except ResponseTooLargeError as exc:
            raise ResponseTooLargeError(too_large) from exc
        if response.status_code == 403:
            detail = (
                f"{what}: the store refused its presigned link with 403, as it does once a link expired: "
                f"{response.text[:200]}"
            )
            raise _ExpiredLinkError(403, {"status": 403, "detail": detail})
        if response.status_code != 200:
            raise ApiError(response.status_code, {"detail": f"{what}: {response.text[:200]}"})
        return response.content

    def fetch_image(self, image: Image) -> bytes:
        """The image's PNG/WebP bytes, checked against its sha256 (from its shard, for a tar job)."""
        if not image.url:
            raise ClientError(f"image {image.index} has no URL (status {image.status})")
        shard = _in_shard(image)
        # A plain image is exactly `size_bytes` long; a tar job's row gives its member's size, not the shard's.
        data = self._get_bytes(image.url, f"image {image.index}", None if shard else image.size_bytes)
        if shard:
            data = shard_member(data, image.index)
        if image.sha256 and hashlib.sha256(data).hexdigest() != image.sha256:
            raise ClientError(f"image {image.index}: downloaded bytes do not match sha256 {image.sha256}")
        return data

    def download(
        self, job: Job | str, directory: str | Path, *, threads: int = DEFAULT_DOWNLOAD_THREADS
    ) -> list[Path]:
        """Save every succeeded image of the job under `directory`, mirroring category/SKU folders.

        A page of `DOWNLOAD_PAGE_SIZE` images at a time: the page is listed (presigned links issued then), its
        paths checked, its files fetched, up to `threads` at once, and only then is the next page listed, so no
        link waits long enough to expire and memory holds one page. A link refused anyway (403: it expired) has
        its page listed again, once, for fresh links. A file already there whose sha256 matches is kept without
        downloading it again (an interrupted download resumes where it stopped); every file is written to a
        temporary name and renamed, so a file is either complete or absent. Tar jobs' images come out of their
        shards, each fetched and indexed once and let go once the listing has passed its last image. Returns
        the paths of all the job's images, in index order.
        """
        if threads < 1:
            raise ValueError(f"threads must be at least 1, got {threads}")
        root = Path(directory)
        job_id = _job_id(job)
        shards: dict[str, _Shard] = {}  # by key: the shards the page being saved needs
        paths: list[Path] = []
        pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="catalogan-download")
        try:
            cursor: str | None = None
            while True:
                images, next_cursor = self._images_page(job_id, cursor, DOWNLOAD_PAGE_SIZE)
                paths += self._download_page(pool, root, images, shards, job_id=job_id, cursor=cursor)
                if not next_cursor:
                    return paths
                cursor = next_cursor
        finally:
            pool.shutdown(cancel_futures=True)  # after an error, the fetches still queued are dropped

    def _download_page(
        self,
        pool: ThreadPoolExecutor,
        root: Path,
        images: Sequence[Image],
        shards: dict[str, _Shard],
        *,
        job_id: str,
        cursor: str | None,
    ) -> list[Path]:
        """Save the succeeded images of one listed page (the page after `cursor`); their paths in index order.
        Links refused as expired are replaced by the same page listed again, once."""
        wanted = _deliverable(root, images)
        # A shard holds consecutive images, so one this page does not list is done with; one it does list may
        # have started on an earlier page (a shard of 1,000 images spans five) and is kept.
        listed = {image.key for image in wanted if _in_shard(image)}
        for key in [key for key in shards if key not in listed]:
            del shards[key]
        saved, expired = self._save_images(pool, root, wanted, shards, expired_ok=True)
        if expired:
            fresh = {
                image.index: image
                for image in _deliverable(root, self._images_page(job_id, cursor, DOWNLOAD_PAGE_SIZE)[0])
            }
            gone = [image.index for image in expired if image.index not in fresh]
            if gone:
                raise ClientError(
                    f"images {gone}: no longer listed as delivered when their page was listed again"
                )
            again, _ = self._save_images(
                pool, root, [fresh[image.index] for image in expired], shards, expired_ok=False
            )
            saved.update(again)
        return [saved[image.index] for image in wanted]

    def _save_images(
        self,
        pool: ThreadPoolExecutor,
        root: Path,
        images: Sequence[Image],
        shards: dict[str, _Shard],
        *,
        expired_ok: bool,
    ) -> tuple[dict[int, Path], list[Image]]:
        """Save `images` (listed and checked) under `root` on `pool`: a file already there with the image's
        sha256 is kept; each shard the others need is fetched and indexed once (into `shards`); then every
        file is written. Returns the paths saved by index, and the images whose link was refused as expired
        (with `expired_ok`; without, that `_ExpiredLinkError` is raised)."""
        targets = {image.index: root / image_path(image) for image in images}

        def fetch_shard(image: Image) -> _Shard | None:
            what = f"shard {image.key}"
            try:
                return _Shard(self._get_bytes(str(image.url), what), what)
            except _ExpiredLinkError:
                if not expired_ok:
                    raise
                return None

        def save(image: Image) -> Path | None:
            if _in_shard(image):
                data = shards[str(image.key)].member(image.index)
            else:
                try:
                    data = self._get_bytes(str(image.url), f"image {image.index}", image.size_bytes)
                except _ExpiredLinkError:
                    if not expired_ok:
                        raise
                    return None
            if image.sha256 and hashlib.sha256(data).hexdigest() != image.sha256:
                raise ClientError(f"image {image.index}: downloaded bytes do not match sha256 {image.sha256}")
            _write_file(targets[image.index], data)
            return targets[image.index]

        present = pool.map(lambda image: _holds(targets[image.index], image.sha256), images)
        missing = [image for image, there in zip(images, present, strict=True) if not there]
        needed: dict[str, Image] = {}  # each shard by the first of its missing images (whose link fetches it)
        for image in missing:
            if _in_shard(image) and image.key not in shards:
                needed.setdefault(str(image.key), image)
        for key, shard in zip(needed, pool.map(fetch_shard, needed.values()), strict=True):
            if shard is not None:
                shards[key] = shard
        expired = [image for image in missing if _in_shard(image) and image.key not in shards]
        runnable = [image for image in missing if not (_in_shard(image) and image.key not in shards)]
        for image, path in zip(runnable, pool.map(save, runnable), strict=True):
            if path is None:
                expired.append(image)
        late = {image.index for image in expired}
        return {index: target for index, target in targets.items() if index not in late}, expired

    def get_shard_index(self, job: Job | str) -> dict[str, Any]:
        """A finished tar job's shard index: each shard with its key, a presigned `url`, index range and size."""
        return self._call("GET", f"/v1/jobs/{_job_id(job)}/shards")

    def get_manifest(self, job: Job | str, *, format: str = "jsonl") -> bytes:
        """The finished job's manifest, as JSONL (default) or Parquet bytes, whole in memory (at most
        `max_manifest_bytes`; `download_manifest` streams it to a file instead)."""
        path = f"/v1/jobs/{_job_id(job)}/manifest"
        return self._request("GET", path, params={"format": format}, limit=self.max_manifest_bytes).content

    def iter_manifest_rows(self, job: Job | str) -> Iterator[dict[str, Any]]:
        """The finished job's manifest rows (index, sku, category, key, sha256, seed, model version, status,
        error, review) one at a time, parsed from the JSONL answer as it streams in: memory holds one line (at
        most `MAX_MANIFEST_LINE_BYTES`) however many rows there are; the answer is capped at
        `max_manifest_bytes`. Stopping early closes the connection."""
        path = f"/v1/jobs/{_job_id(job)}/manifest"
        what = f"GET {self.base_url}{path}"
        response = self._request("GET", path, params={"format": "jsonl"}, stream=True)
        with contextlib.closing(response):
            lines = _iter_lines(response, self.max_manifest_bytes, MAX_MANIFEST_LINE_BYTES, what)
            for number, line in enumerate(lines, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except ValueError:  # JSONDecodeError, and UnicodeDecodeError for bytes that are not text
                    row = None
                if not isinstance(row, dict):
                    raise NotCataloganApiError(
                        f"{what}: line {number} is not a JSON object, as the catalogan API's manifest rows "
                        f"are: is {API_URL_ENV} (or base_url) the API's own address?"
                    )
                yield row

    def manifest_rows(self, job: Job | str) -> list[dict[str, Any]]:
        """The finished job's manifest rows (index, sku, category, key, sha256, seed, model version, status,
        error, review), all in one list (`iter_manifest_rows` reads a large job's a row at a time)."""
        return list(self.iter_manifest_rows(job))

    def iter_manifest_bytes(self, job: Job | str, *, format: str = "jsonl") -> Generator[bytes, None, None]:
        """The finished job's manifest, JSONL (default) or Parquet, in pieces as it streams in (at most
        `max_manifest_bytes` in all, never whole in memory); `TransportError` when the answer breaks off.
        Stopping early closes the connection."""
        if format not in MANIFEST_FORMATS:
            raise ValueError(f"format must be one of {', '.join(MANIFEST_FORMATS)}, got {format!r}")
        api_path = f"/v1/jobs/{_job_id(job)}/manifest"
        what = f"GET {self.base_url}{api_path}"
        response = self._request("GET", api_path, params={"format": format}, stream=True)
        with contextlib.closing(response):
            try:
                yield from _iter_capped(response, self.max_manifest_bytes, what)
            except httpx.HTTPError as exc:
                raise TransportError(f"{what}: {exc}") from exc

    def download_manifest(self, job: Job | str, path: str | Path, *, format: str = "jsonl") -> Path:
        """Save the finished job's manifest, JSONL (default) or Parquet, to the file `path` as it streams in
        (`iter_manifest_bytes`). It is written to a temporary name beside `path` and renamed, so `path` is the
        complete manifest or, after an error, as it was. Returns `path`."""
        if format not in MANIFEST_FORMATS:  # before any file is made (the generator checks only when first read)
            raise ValueError(f"format must be one of {', '.join(MANIFEST_FORMATS)}, got {format!r}")
        pieces = self.iter_manifest_bytes(job, format=format)
        target = Path(path)
        partial = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.part")
        try:
            with contextlib.closing(pieces), partial.open("wb") as handle:
                for piece in pieces:
                    handle.write(piece)
            partial.replace(target)
        finally:
            partial.unlink(missing_ok=True)
        return target

    # -- models and previews -----------------------------------------------------------------------------

    def list_models(self) -> list[Model]:
        """Every registered model version."""
        body = self._call("GET", "/v1/models")
        return [
            Model(m["name"], m["version"], m["status"], m.get("categories", []), m.get("metrics", {}))
            for m in body["data"]
        ]

    def preview(
        self, category: str, *, count: int = 4, model: str | None = None, seed: int | None = None
    ) -> list[PreviewImage]:
        """Up to 8 images generated right away, to try a model before a bulk job."""
        import base64

        spec: dict[str, Any] = {"category": category, "count": count}
        if model:
            spec["model"] = model
        if seed is not None:
            spec["seed"] = seed
        body = self._call("POST", "/v1/previews", json=spec)
        return [
            PreviewImage(i["index"], i["category"], i["sha256"], base64.b64decode(i["png_base64"]))
            for i in body["images"]
        ]


# A spreadsheet reads a cell that starts with one of these as a formula (or, tab and CR, as the start of one).
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(row: Mapping[str, Any]) -> dict[str, Any]:
    """`row` with every text value a spreadsheet would run as a formula prefixed by `'`, which it shows as text
    (OWASP's advice against CSV injection): a tenant's SKU such as `=HYPERLINK(...)` comes through as text.
    For writing manifest rows (`Client.manifest_rows`) to a CSV someone will open in a spreadsheet."""
    return {
        name: "'" + value if isinstance(value, str) and value.startswith(FORMULA_PREFIXES) else value
        for name, value in row.items()
    }


def image_path(image: Image) -> Path:
    """Where `download` puts an image: `<category or sku>/<index:08d>.<ext>` (from its key; tar members are PNG).

    The segments come from the server, so each must be one safe key segment (`validate_key_segment`: not
    empty, `.` or `..`, no `/`, backslash or control character); `ClientError` otherwise.
    """
    key = str(image.key)
    if key.endswith(SHARD_SUFFIX):
        segments = [image.sku or image.category, f"{image.index:08d}.png"]
    else:
        segments = key.split("/")[-2:]
    for segment in segments:
        try:
            validate_key_segment(segment, "key segment")
        except InvalidKeyError as exc:
            raise ClientError(
                f"image {image.index}: the server sent an unsafe path ({exc}); refused"
            ) from exc
    return Path(*segments)


def _check_inside(root: Path, image: Image) -> Path:
    """`root / image_path(image)`, refused (`ClientError`) unless it stays inside `root` once resolved."""
    target = root / image_path(image)
    if not target.resolve().is_relative_to(root.resolve()):
        raise ClientError(f"image {image.index}: {target} is outside {root}; refused")
    return target


def _deliverable(root: Path, images: Sequence[Image]) -> list[Image]:
    """The succeeded images with a link and a key, each checked to land inside `root` (`ClientError` for the
    first that would not: nothing of the page is fetched then)."""
    wanted = [image for image in images if image.status == "succeeded" and image.url and image.key]
    for image in wanted:
        _check_inside(root, image)
    return wanted


def _in_shard(image: Image) -> bool:
    """True for an image of a tar job: its key is the WebDataset shard that holds it."""
    return bool(image.key and image.key.endswith(SHARD_SUFFIX))


def _holds(target: Path, sha256: str | None) -> bool:
    """True when `target` is a file with this sha256 (a download that needs no doing)."""
    return sha256 is not None and target.is_file() and _file_sha256(target) == sha256


def _write_file(target: Path, data: bytes) -> None:
    """Write `target` under a temporary name and rename it: it is complete or absent, never half written."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.part")
    try:
        partial.write_bytes(data)
        partial.replace(target)
    finally:
        partial.unlink(missing_ok=True)


class _Shard:
    """A WebDataset shard's bytes and where each file's data lies in them, from one pass over its headers.

    `TarFile.extractfile(name)` scans every header for each name asked: 1,000 images of a shard cost a million
    header reads, where this costs a thousand and then a dictionary lookup per image."""

    def __init__(self, data: bytes, what: str) -> None:
        self._data = data
        self._members: dict[str, tuple[int, int]] = {}  # name -> (offset of its data, size)
        try:
            with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as archive:
                for member in archive:
                    if member.isreg() and not member.issparse():
                        self._members[member.name] = (member.offset_data, member.size)
        except tarfile.TarError as exc:
            raise ClientError(f"{what}: not a readable tar shard ({exc})") from exc

    def member(self, index: int) -> bytes:
        """The PNG of image `index` (member `<index:08d>.png`); `ClientError` when the shard has none."""
        name = f"{index:08d}.png"
        offset, size = self._members.get(name, (0, -1))
        if size < 0 or offset + size > len(self._data):
            raise ClientError(f"image {index}: no member {name} in its shard")
        return self._data[offset : offset + size]


def shard_member(shard: bytes, index: int) -> bytes:
    """The PNG of image `index` in a WebDataset shard (member `<index:08d>.png`); `ClientError` if absent."""
    return _Shard(shard, f"image {index}'s shard").member(index)


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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
