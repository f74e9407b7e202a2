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

A variation or interpolation may name its source images by the catalogan PNGs you hold:
`client.submit_variations(Path("out/b/00000003.png"), count=8, strength=0.3)`, or `image_ref_from_file(path)`
wherever a source is taken. The file is read here, bounded (`MAX_SOURCE_FILE_BYTES`), for its job id, index and
sha256; only those are sent, and the API makes the job from exactly that delivered image.

The package, a module per noun: `Client` (below) is a `connection.Connection` (settings, HTTP clients, retries)
with the calls of `jobs`, `downloads` (images and tar shards), `manifests` and `previews` (models); `results`
holds the dataclasses they return, `transport` one bounded request and its body readers, `shards` the tar
shard index, `defaults` the limits; `webhooks` and `spreadsheets` the helpers for a receiver and a CSV writer.
"""

from __future__ import annotations

# Names importable from here before the SDK became a package; the public surface is `__all__`.
from scheduler.client.connection import API_KEY_PATTERN as API_KEY_PATTERN
from scheduler.client.connection import check_api_key as check_api_key
from scheduler.client.connection import check_api_url as check_api_url
from scheduler.client.defaults import API_KEY_ENV as API_KEY_ENV
from scheduler.client.defaults import API_URL_ENV as API_URL_ENV
from scheduler.client.defaults import DEFAULT_API_URL as DEFAULT_API_URL
from scheduler.client.defaults import DEFAULT_BACKOFF_SECONDS as DEFAULT_BACKOFF_SECONDS
from scheduler.client.defaults import DEFAULT_DOWNLOAD_THREADS as DEFAULT_DOWNLOAD_THREADS
from scheduler.client.defaults import DEFAULT_MAX_DOWNLOAD_BYTES as DEFAULT_MAX_DOWNLOAD_BYTES
from scheduler.client.defaults import DEFAULT_MAX_MANIFEST_BYTES as DEFAULT_MAX_MANIFEST_BYTES
from scheduler.client.defaults import DEFAULT_MAX_POLL_SECONDS as DEFAULT_MAX_POLL_SECONDS
from scheduler.client.defaults import DEFAULT_MAX_RESPONSE_BYTES as DEFAULT_MAX_RESPONSE_BYTES
from scheduler.client.defaults import DEFAULT_MAX_RETRIES as DEFAULT_MAX_RETRIES
from scheduler.client.defaults import DEFAULT_TIMEOUT_SECONDS as DEFAULT_TIMEOUT_SECONDS
from scheduler.client.defaults import DOWNLOAD_PAGE_SIZE as DOWNLOAD_PAGE_SIZE
from scheduler.client.defaults import ERROR_BODY_BYTES as ERROR_BODY_BYTES
from scheduler.client.defaults import MAX_BACKOFF_SECONDS as MAX_BACKOFF_SECONDS
from scheduler.client.defaults import MAX_MANIFEST_LINE_BYTES as MAX_MANIFEST_LINE_BYTES
from scheduler.client.defaults import MAX_RETRY_AFTER_SECONDS as MAX_RETRY_AFTER_SECONDS
from scheduler.client.defaults import POLL_BACKOFF_FACTOR as POLL_BACKOFF_FACTOR
from scheduler.client.defaults import RETRY_STATUSES as RETRY_STATUSES
from scheduler.client.downloads import ImageCalls
from scheduler.client.downloads import image_path as image_path
from scheduler.client.jobs import JOB_ID_PATTERN as JOB_ID_PATTERN
from scheduler.client.jobs import MAX_SOURCE_FILE_BYTES as MAX_SOURCE_FILE_BYTES
from scheduler.client.jobs import RETRY_REFUSED_STATUSES as RETRY_REFUSED_STATUSES
from scheduler.client.jobs import JobCalls
from scheduler.client.jobs import JobIdError as JobIdError
from scheduler.client.jobs import SourceFileError as SourceFileError
from scheduler.client.jobs import image_ref_from_file as image_ref_from_file
from scheduler.client.manifests import MANIFEST_FORMATS as MANIFEST_FORMATS
from scheduler.client.manifests import ManifestCalls
from scheduler.client.previews import ModelCalls
from scheduler.client.results import TERMINAL_STATUSES as TERMINAL_STATUSES
from scheduler.client.results import Estimate, Image, Job, JobPage, Model, PreviewImage
from scheduler.client.shards import SHARD_SUFFIX as SHARD_SUFFIX
from scheduler.client.shards import shard_member as shard_member
from scheduler.client.spreadsheets import FORMULA_PREFIXES as FORMULA_PREFIXES
from scheduler.client.spreadsheets import spreadsheet_safe
from scheduler.client.webhooks import verify_webhook
from scheduler.errors import ApiError as ApiError
from scheduler.errors import ClientError as ClientError
from scheduler.errors import NotCataloganApiError
from scheduler.errors import ResponseTooLargeError as ResponseTooLargeError
from scheduler.errors import TransportError as TransportError
from scheduler.errors import WebhookVerificationError as WebhookVerificationError

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


class Client(JobCalls, ImageCalls, ManifestCalls, ModelCalls):
    """A connection to one catalogan API with one API key. Use as a context manager or call `close()`.

    `base_url` defaults to `CATALOGAN_API_URL` (else http://127.0.0.1:8000), `api_key` to `CATALOGAN_API_KEY`;
    without a key `ClientError` is raised.
    """
