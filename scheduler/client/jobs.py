"""The job calls of `Client`: submit (items, a manifest, variations, an interpolation), get, list, wait for,
cancel, delete, retry and estimate a job; the check a job id passes before it goes into a URL path; and
`image_ref_from_file`, a source image named by the catalogan PNG you hold."""

from __future__ import annotations

import json
import os
import re
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeAlias

from db import source_files
from scheduler.client.connection import Connection
from scheduler.client.defaults import DEFAULT_MAX_POLL_SECONDS, POLL_BACKOFF_FACTOR
from scheduler.client.results import Estimate, Job, JobPage
from scheduler.client.transport import _json_object, _OutOfTime, _ResentError
from scheduler.errors import ApiError, ClientError

JOB_ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")  # what a job id can be (the API's are 32 hex digits)
# A job in one of these after a retry answered 409 was not retried (a retried one goes back to the queue).
RETRY_REFUSED_STATUSES = frozenset({"completed_with_failures", "failed", "cancelling", "cancelled"})


class JobIdError(ClientError, ValueError):
    """Raised for a job id that cannot be one (bad input: exit 2 in the CLI)."""


def _job_id(job: Job | str) -> str:
    """The job's id, checked before it goes into a URL path (`abc/`, `''` or `../x` would name another route)."""
    value = job.id if isinstance(job, Job) else job
    if not isinstance(value, str) or not JOB_ID_PATTERN.fullmatch(value):
        raise JobIdError(f"job id {value!r}: must be 1 to 64 letters, digits, '_' or '-' (a job's `id`)")
    return value


class SourceFileError(ClientError, ValueError):
    """Raised for a file that cannot name a source image: missing, over `MAX_SOURCE_FILE_BYTES`, not a PNG, or
    without catalogan's job id and index (bad input: exit 2 in the CLI). Nothing was sent."""


MAX_SOURCE_FILE_BYTES = source_files.MAX_SOURCE_FILE_BYTES
# A source image: (job, index), a catalogan PNG's path (a `pathlib.Path`: a `str` is a job id), or the
# mapping `image_ref_from_file` returns.
ImageSource: TypeAlias = "tuple[Job | str, int] | os.PathLike[str] | Mapping[str, Any]"


def image_ref_from_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The delivered image a catalogan PNG you hold names, as a source of a variation or interpolation:
    `{"job_id", "index", "sha256"}`, the job id and index read from the file's provenance and the sha256 from
    its bytes. Read here, bounded (a file over `MAX_SOURCE_FILE_BYTES` is refused before it is read; the PNG's
    chunks are walked and two text chunks read, no pixel decoded); the image itself is never sent. The API then
    makes the job only from that very file (a 422 naming `...source.sha256` for an edited copy).

    Raises `SourceFileError` saying why the file cannot name an image."""
    try:
        return source_files.read_source_file(path).to_json()
    except source_files.SourceFileError as exc:
        raise SourceFileError(f"{os.fspath(path)!r}: {exc}") from exc


def _image_ref(source: Any, what: str) -> dict[str, Any]:
    """A source image as the API takes it: from (job, index), a file's path, or a mapping with job_id and
    index (and sha256); `ClientError` for anything else, before anything is sent."""
    if isinstance(source, os.PathLike):
        return image_ref_from_file(source)
    if isinstance(source, Mapping):
        unknown = set(source) - {"job_id", "index", "sha256"}
        if unknown or not {"job_id", "index"} <= set(source):
            raise ClientError(
                f"{what}: a mapping of job_id, index and optionally sha256, not {sorted(source)}"
            )
        return {"job_id": _job_id(source["job_id"]), **{k: v for k, v in source.items() if k != "job_id"}}
    if isinstance(source, tuple) and len(source) == 2:
        return {"job_id": _job_id(source[0]), "index": source[1]}
    raise ClientError(
        f"{what}: give (job, index), the path of a PNG a job delivered, or image_ref_from_file()"
    )


def _control_json(name: str, value: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """An estimate's `variation` / `interpolation` with its source images as the API takes them."""
    if value is None:
        return None
    body = dict(value)
    for key in ("source",) if name == "variation" else ("start", "end"):
        if key in body:
            body[key] = _image_ref(body[key], f"{name}.{key}")
    return body


def _present(values: Mapping[str, Any]) -> dict[str, Any]:
    """The entries that are not None (fields left out of a request body)."""
    return {name: value for name, value in values.items() if value is not None}


class JobCalls(Connection):
    """The calls of `Client` on jobs."""

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
        source: Job | str | os.PathLike[str] | Mapping[str, Any],
        index: int | None = None,
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

        `source` may instead be the catalogan PNG you hold, as a `pathlib.Path` (or `image_ref_from_file`'s
        result), without `index`: its job and index are read from the file, and the API checks that the file
        is exactly that delivered image (its sha256). `strength` 0 gives the source image's own pixels, 1 an
        unrelated image of its category; `truncation` defaults to the source's ψ. Other `POST /v1/jobs`
        fields (`model`, `output_format`, `chunk_size`, `quality_gate`, `metadata`, ...) pass through `options`.
        """
        if isinstance(source, os.PathLike | Mapping):
            if index is not None:
                raise ClientError("index: the file (or mapping) names its image; give index only with a job")
            ref = _image_ref(source, "source")
        elif index is None:
            raise ClientError("index: give the index of the image in job source (or source as a file's Path)")
        else:
            ref = _image_ref((source, index), "source")
        variation = {"source": ref, "strength": strength, "count": count}
        spec = {"variation": variation, "seed": seed, "truncation": truncation, "webhook_url": webhook_url}
        return self._submit_json({**_present(spec), **options}, idempotency_key or uuid.uuid4().hex)

    def submit_interpolation(
        self,
        start: ImageSource,
        end: ImageSource,
        *,
        frames: int,
        webhook_url: str | None = None,
        idempotency_key: str | None = None,
        **options: Any,
    ) -> Job:
        """A job of `frames` images on the latent path between two of your images, each given as (job, index)
        or as the catalogan PNG you hold (a `pathlib.Path`, or `image_ref_from_file`'s result: the API then
        checks it is exactly that delivered image).

        Frame 0 is `start`'s pixels and the last frame `end`'s; both must come from one model version and be of
        one category. Other `POST /v1/jobs` fields pass through `options`.
        """
        interpolation = {
            "start": _image_ref(start, "start"),
            "end": _image_ref(end, "end"),
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
        truncation: float | None = None,
        variation: Mapping[str, Any] | None = None,
        interpolation: Mapping[str, Any] | None = None,
    ) -> Estimate:
        """What a job of `items` (or of the `s3://` manifest at `manifest_uri`, or a `variation` /
        `interpolation`) would take, without creating it: images, chunks, seconds, and `quota_cost` (what it
        would charge to the daily quota: with a `quality_gate`, each image's worst-case redraws too).

        `variation`: `{"source": SOURCE, "strength": 0.3, "count": 8}`; `interpolation`: `{"start": SOURCE,
        "end": SOURCE, "frames": 8}`; a SOURCE is (job, index), a catalogan PNG's `pathlib.Path` or
        `image_ref_from_file`'s result. Their sources are checked as a submit checks them (the same 422s). The
        other arguments are `submit_job`'s."""
        spec = _present(
            {
                "items": list(items) if items is not None else None,
                "model": model or None,
                "chunk_size": chunk_size or None,
                "quality_gate": dict(quality_gate) if quality_gate is not None else None,
                "queue": queue,
                "manifest_uri": manifest_uri,
                "output_format": output_format,
                "truncation": truncation,
                "variation": _control_json("variation", variation),
                "interpolation": _control_json("interpolation", interpolation),
            }
        )
        return Estimate.from_json(self._call("POST", "/v1/jobs:estimate", json=spec))
