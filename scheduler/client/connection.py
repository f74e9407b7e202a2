"""A connection to one catalogan API: the base URL and API key (read from the environment, checked before any
request), the two HTTP clients (the API's, with the key; presigned links', without), and `_request`: one API
call sent again on 5xx, 429 and connection failures with exponential backoff, `Retry-After` honoured, never
past a caller's deadline. `Client` is this plus the calls of `jobs`, `downloads`, `manifests` and `previews`."""

from __future__ import annotations

import ipaddress
import os
import re
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, Self
from urllib.parse import urlsplit

import httpx

from scheduler.client.defaults import (
    API_KEY_ENV,
    API_URL_ENV,
    DEFAULT_API_URL,
    DEFAULT_BACKOFF_SECONDS,
    DEFAULT_MAX_DOWNLOAD_BYTES,
    DEFAULT_MAX_MANIFEST_BYTES,
    DEFAULT_MAX_RESPONSE_BYTES,
    DEFAULT_MAX_RETRIES,
    DEFAULT_TIMEOUT_SECONDS,
    MAX_BACKOFF_SECONDS,
    MAX_RETRY_AFTER_SECONDS,
    RETRY_STATUSES,
)
from scheduler.client.transport import (
    _UNSENT_ERRORS,
    _Answer,
    _json_object,
    _OutOfTime,
    _ResentError,
    _retry_after,
    _send_capped,
)
from scheduler.errors import ApiError, ClientError, TransportError

API_KEY_PATTERN = re.compile(r"[!-~]+")  # printable ASCII, no space: what `catalogan keys create` prints


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


class Connection:
    """The settings, HTTP clients and request plumbing every group of `Client` calls shares (see `Client`)."""

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

    def __enter__(self) -> Self:
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
