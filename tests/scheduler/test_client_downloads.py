"""`Client.download` over many pages: page by page with fresh links, a re-listing for links that expired,
retried fetches, and tar shards indexed once and let go.

The peer is a fake catalog behind one `httpx.MockTransport`: `http://api` lists a job's images a page at a
time, each link naming the listing that issued it, and `http://store` serves the objects behind the links
(refusing the links a test says have expired with 403, as S3 does). Each object is served as a fresh copy, as
bytes off a socket would be, so the memory the SDK keeps is its own.
"""

from __future__ import annotations

import gc
import hashlib
import io
import tarfile
import tracemalloc
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest

from scheduler.client import DOWNLOAD_PAGE_SIZE, Client
from scheduler.errors import ApiError, ClientError

EXPIRED = "<Error><Code>AccessDenied</Code><Message>Request has expired</Message></Error>"  # S3's answer


def png(index: int, size: int = 64) -> bytes:
    """Distinct PNG-looking bytes for image `index`."""
    return b"\x89PNG\r\n\x1a\n" + index.to_bytes(4, "big") * (size // 4)


class FakeCatalog:
    """One job's image listing (the API) and the objects behind its presigned links (the store).

    `refuse(listing, key)` gives the status the store answers instead of the object (None: serve it);
    `failures[key]` lists what the next fetches of `key` get first (a status, or an exception to raise);
    `on_list(cursor)` runs before each listing. `log` records ("list", cursor) and ("get", key, listing)."""

    def __init__(self, rows: list[dict[str, Any]], objects: dict[str, bytes]) -> None:
        self.rows = rows
        self.objects = objects
        self.listings = 0
        self.log: list[tuple[Any, ...]] = []
        self.refuse: Callable[[int, str], int | None] = lambda listing, key: None
        self.failures: dict[str, list[int | Exception]] = {}
        self.on_list: Callable[[str | None], None] = lambda cursor: None
        self.on_get: Callable[[str], None] = lambda key: None
        self.transport = httpx.MockTransport(self.handle)

    def handle(self, request: httpx.Request) -> httpx.Response:
        """Route to the listing or the store."""
        return self.list_page(request) if request.url.host == "api" else self.serve(request)

    def list_page(self, request: httpx.Request) -> httpx.Response:
        """`GET /v1/jobs/j/images`: rows after the cursor, each with a link naming this listing."""
        cursor = request.url.params.get("cursor")
        self.on_list(cursor)
        self.listings += 1
        self.log.append(("list", cursor))
        limit = int(request.url.params["limit"])
        after = [row for row in self.rows if row["index"] > int(cursor or -1)]
        page = after[:limit]
        data = [
            {**row, "url": f"http://store/{row['key']}?listing={self.listings}", "url_expires_at": None}
            for row in page
        ]
        more = str(page[-1]["index"]) if len(after) > limit else None
        return httpx.Response(200, json={"data": data, "next_cursor": more})

    def serve(self, request: httpx.Request) -> httpx.Response:
        """The object behind a link, unless refused or scripted to fail first."""
        key = request.url.path.lstrip("/")
        listing = int(request.url.params["listing"])
        self.log.append(("get", key, listing))
        self.on_get(key)
        scripted = self.failures.get(key)
        if scripted:
            failure = scripted.pop(0)
            if isinstance(failure, Exception):
                raise failure
            return httpx.Response(failure, text="<Error><Code>SlowDown</Code></Error>")
        status = self.refuse(listing, key)
        if status is not None:
            return httpx.Response(status, text=EXPIRED)
        return httpx.Response(200, content=bytes(bytearray(self.objects[key])))

    def gets(self, key: str) -> list[int]:
        """The listings whose link to `key` was fetched, in order."""
        return [entry[2] for entry in self.log if entry[0] == "get" and entry[1] == key]

    def pages_listed(self) -> list[str | None]:
        """The cursor of every listing, in order."""
        return [entry[1] for entry in self.log if entry[0] == "list"]


def row(index: int, key: str, data: bytes) -> dict[str, Any]:
    """A succeeded image row of category `a` (its `url` is added by the listing)."""
    return {
        "index": index,
        "category": "a",
        "sku": None,
        "status": "succeeded",
        "key": key,
        "sha256": hashlib.sha256(data).hexdigest(),
        "size_bytes": len(data),
        "error": None,
    }


def plain_job(images: int) -> FakeCatalog:
    """A png job: one object per image."""
    objects = {f"t/jobs/j/a/{index:08d}.png": png(index) for index in range(images)}
    rows = [row(index, key, data) for index, (key, data) in enumerate(objects.items())]
    return FakeCatalog(rows, objects)


def tar_job(shards: int, per_shard: int, image_bytes: int = 64) -> FakeCatalog:
    """A tar job: WebDataset shards of `per_shard` images (a PNG and a JSON member each)."""
    objects: dict[str, bytes] = {}
    rows: list[dict[str, Any]] = []
    for shard in range(shards):
        key = f"t/jobs/j/shards/{shard:06d}.tar"
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as archive:
            for index in range(shard * per_shard, (shard + 1) * per_shard):
                data = png(index, image_bytes)
                for name, content in ((f"{index:08d}.png", data), (f"{index:08d}.json", b"{}")):
                    info = tarfile.TarInfo(name)
                    info.size = len(content)
                    archive.addfile(info, io.BytesIO(content))
                rows.append(row(index, key, data))
        objects[key] = buffer.getvalue()
    return FakeCatalog(rows, objects)


def client(catalog: FakeCatalog, **options: Any) -> Client:
    """A client of the fake catalog that does not really sleep between retries."""
    options.setdefault("sleep", lambda seconds: None)
    return Client("http://api", "cg_k", transport=catalog.transport, **options)


def files(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` by its relative path."""
    return {str(path.relative_to(folder)): path.read_bytes() for path in folder.rglob("*") if path.is_file()}


# --- page by page -----------------------------------------------------------------------------------------


def test_download_fetches_each_page_before_listing_the_next(tmp_path: Path) -> None:
    """Given a job of 2½ pages, when downloading, then a page is listed only once every file of the page
    before it is on disk, so each link is used soon after it was issued (before: every page was listed first,
    holding every row, and the first pages' links were hours old by the time a long download reached them)."""
    count = 2 * DOWNLOAD_PAGE_SIZE + 50
    catalog = plain_job(count)
    on_disk_at_listing: list[int] = []
    catalog.on_list = lambda cursor: on_disk_at_listing.append(len(files(tmp_path)))

    with client(catalog) as sdk:
        paths = sdk.download("j", tmp_path)

    assert on_disk_at_listing == [0, DOWNLOAD_PAGE_SIZE, 2 * DOWNLOAD_PAGE_SIZE]
    assert [path.name for path in paths] == [f"{index:08d}.png" for index in range(count)]
    assert files(tmp_path) == {f"a/{index:08d}.png": png(index) for index in range(count)}


def test_links_that_expired_get_their_page_listed_again_once(tmp_path: Path) -> None:
    """Given a store that refuses (403, "Request has expired") every link of the second listing, when
    downloading a job of 2½ pages, then that page is listed again for fresh links and every file arrives, each
    expired link was tried once (a 403 is not retried as an outage) and no other page was listed twice."""
    catalog = plain_job(2 * DOWNLOAD_PAGE_SIZE + 50)
    catalog.refuse = lambda listing, key: 403 if listing == 2 else None
    second_page = str(DOWNLOAD_PAGE_SIZE - 1)

    with client(catalog) as sdk:
        sdk.download("j", tmp_path)

    assert catalog.pages_listed() == [None, second_page, second_page, str(2 * DOWNLOAD_PAGE_SIZE - 1)]
    assert catalog.gets(f"t/jobs/j/a/{DOWNLOAD_PAGE_SIZE:08d}.png") == [2, 3]
    assert len(files(tmp_path)) == 2 * DOWNLOAD_PAGE_SIZE + 50


def test_links_refused_again_after_the_relisting_are_an_error(tmp_path: Path) -> None:
    """Given a store that refuses every link from the second listing on, when downloading, then ApiError 403
    names the image, after the second page was listed twice (not in a loop), with the first page saved."""
    catalog = plain_job(DOWNLOAD_PAGE_SIZE + 10)
    catalog.refuse = lambda listing, key: 403 if listing >= 2 else None

    with client(catalog) as sdk, pytest.raises(ApiError, match="403") as refused:
        sdk.download("j", tmp_path)

    assert refused.value.status == 403 and "expired" in str(refused.value)
    assert catalog.pages_listed() == [None, str(DOWNLOAD_PAGE_SIZE - 1), str(DOWNLOAD_PAGE_SIZE - 1)]
    assert len(files(tmp_path)) == DOWNLOAD_PAGE_SIZE


# --- retried fetches ---------------------------------------------------------------------------------------


def test_an_image_fetch_is_retried_through_slowdown_and_a_reset_connection(tmp_path: Path) -> None:
    """Given a store that answers one image 503 SlowDown and then resets the connection, when downloading, then
    the SDK backs off (0.5 s, 1 s) and the third try delivers it (before: the first 503 aborted the download)."""
    catalog = plain_job(3)
    key = "t/jobs/j/a/00000001.png"
    catalog.failures[key] = [503, httpx.ReadError("connection reset by peer")]
    sleeps: list[float] = []

    with client(catalog, sleep=sleeps.append, backoff_seconds=0.5) as sdk:
        sdk.download("j", tmp_path)

    assert sleeps == [0.5, 1.0] and len(catalog.gets(key)) == 3
    assert files(tmp_path)["a/00000001.png"] == png(1)


def test_image_fetch_retries_are_bounded(tmp_path: Path) -> None:
    """Given a store that answers one image 503 every time, when downloading with max_retries=2, then ApiError
    503 after three tries, and that image is not written."""
    catalog = plain_job(2)
    key = "t/jobs/j/a/00000001.png"
    catalog.failures[key] = [503] * 10

    with client(catalog, max_retries=2) as sdk, pytest.raises(ApiError) as failed:
        sdk.download("j", tmp_path)

    assert failed.value.status == 503 and len(catalog.gets(key)) == 3
    assert "a/00000001.png" not in files(tmp_path)


# --- tar shards --------------------------------------------------------------------------------------------


def test_a_shard_is_fetched_and_read_once_for_all_its_images(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Given a tar job of two shards of 300 images (600 members each, a shard spanning pages), when
    downloading, then each shard is fetched once and its member headers are read once: 1,200 header reads, not
    one pass over the shard per image (before: 600 images × 600 headers, seconds per shard)."""
    catalog = tar_job(shards=2, per_shard=300)
    original = tarfile.TarInfo.fromtarfile.__func__  # type: ignore[attr-defined]
    headers: list[int] = []

    def counted(cls: type[tarfile.TarInfo], archive: tarfile.TarFile) -> tarfile.TarInfo:
        headers.append(1)
        return original(cls, archive)

    monkeypatch.setattr(tarfile.TarInfo, "fromtarfile", classmethod(counted))

    with client(catalog) as sdk:
        paths = sdk.download("j", tmp_path)

    assert len(paths) == 600 and files(tmp_path) == {f"a/{index:08d}.png": png(index) for index in range(600)}
    for shard in ("t/jobs/j/shards/000000.tar", "t/jobs/j/shards/000001.tar"):
        assert len(catalog.gets(shard)) == 1
    assert len(headers) <= 2 * 600 + 2, f"{len(headers)} tar headers read for 1,200 members"


def test_a_shard_is_let_go_once_the_listing_has_passed_it(tmp_path: Path) -> None:
    """Given a tar job of eight shards of one page each (about 1.7 MB a shard), when downloading, then each
    shard is fetched once the earlier ones were let go: the SDK holds less than one shard's size then (before:
    every shard of the job stayed in memory until the download ended, seven of them by the last fetch)."""
    catalog = tar_job(shards=8, per_shard=DOWNLOAD_PAGE_SIZE, image_bytes=8192)
    shard_bytes = len(catalog.objects["t/jobs/j/shards/000000.tar"])
    held: list[int] = []

    def measure(key: str) -> None:
        gc.collect()
        held.append(tracemalloc.get_traced_memory()[0])

    catalog.on_get = measure
    tracemalloc.start()
    try:
        with client(catalog, max_retries=0) as sdk:
            sdk.download("j", tmp_path, threads=2)
    finally:
        tracemalloc.stop()

    assert len(held) == 8 and len(files(tmp_path)) == 8 * DOWNLOAD_PAGE_SIZE
    assert max(held) < shard_bytes, [f"{size / shard_bytes:.1f} shards" for size in held]


def test_fetch_image_still_reads_one_image_out_of_its_shard() -> None:
    """Given a tar job, when one image is fetched on its own, then its PNG comes out of the shard, checked
    against its sha256; a row whose sha256 does not match its member is refused."""
    catalog = tar_job(shards=1, per_shard=5)
    with client(catalog) as sdk:
        images = list(sdk.iter_images("j"))
        assert sdk.fetch_image(images[3]) == png(3)
        with pytest.raises(ClientError, match="sha256"):
            sdk.fetch_image(replace(images[2], sha256=images[3].sha256))
