"""The manifest calls of `Client`: a finished job's manifest (JSONL or Parquet) whole, streamed a row or a
piece at a time, or saved to a file that is complete or untouched."""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import httpx

from scheduler.client.connection import Connection
from scheduler.client.defaults import API_URL_ENV, MAX_MANIFEST_LINE_BYTES
from scheduler.client.jobs import _job_id
from scheduler.client.results import Job
from scheduler.client.transport import _iter_capped, _iter_lines
from scheduler.errors import NotCataloganApiError, TransportError

MANIFEST_FORMATS = ("jsonl", "parquet")


class ManifestCalls(Connection):
    """The calls of `Client` on a finished job's manifest."""

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
        if (
            format not in MANIFEST_FORMATS
        ):  # before any file is made (the generator checks only when first read)
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
