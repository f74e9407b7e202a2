"""The SDK's defaults and limits: where it looks for the API, how long and how often it tries, and how much of
an answer it reads. Each constant carries its unit in its name (or a comment)."""

from __future__ import annotations

DEFAULT_API_URL = "http://127.0.0.1:8000"
API_URL_ENV = "CATALOGAN_API_URL"
API_KEY_ENV = "CATALOGAN_API_KEY"
DEFAULT_DOWNLOAD_THREADS = 8
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
DOWNLOAD_PAGE_SIZE = 200  # images `download` lists, fetches and lets go of at a time
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
