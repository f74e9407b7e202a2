"""The image calls of `Client`: list a job's images, fetch one (from its shard, for a tar job), download a
whole job page by page into category/SKU folders, and get a tar job's shard index; and where each image's
file goes (every segment the server sends checked to stay inside the target folder)."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from db.errors import InvalidKeyError
from db.storage.keys import validate_key_segment
from scheduler.client.connection import Connection
from scheduler.client.defaults import DEFAULT_DOWNLOAD_THREADS, DOWNLOAD_PAGE_SIZE, ERROR_BODY_BYTES
from scheduler.client.jobs import _job_id
from scheduler.client.results import Image, Job
from scheduler.client.shards import SHARD_SUFFIX, _in_shard, _Shard, shard_member
from scheduler.client.transport import _ExpiredLinkError
from scheduler.errors import ApiError, ClientError, ResponseTooLargeError


class ImageCalls(Connection):
    """The calls of `Client` on a job's images and shards."""

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


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
