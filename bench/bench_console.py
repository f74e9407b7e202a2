"""How fast the console's job page shows its first tiles, for a small job and a 10,000-image job, in one run.

    .venv/bin/python bench/bench_console.py [--images 100,10000] [--repeats 5]

Set-up (the embedded default, no servers): a SQLite file and a local-folder object store in a temp folder, one
tenant and key, and per size a finished job whose image rows and PNG objects are written directly (the worker
is not what is measured). The real app (API + console) is served by uvicorn on loopback; Debian's Chromium,
driven by Playwright, signs in once and then, per size and repeat, opens the job page and waits until the first
tile's image has loaded (`img.complete && naturalWidth > 0`). Printed per size: the median time to the first
tile (navigation start → first tile loaded), the median time of the page's HTML alone (an httpx GET with the
session cookie), and the ratio of each to the smallest job's.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from db import migrate  # noqa: E402
from db.engine import make_engine, make_session_factory, transaction  # noqa: E402
from db.settings import BrokerSettings, DataSettings, StorageSettings  # noqa: E402
from db.status import ImageStatus, JobStatus, ModelVersionStatus  # noqa: E402
from db.storage import open_store  # noqa: E402
from db.tables import Chunk, Image, Job, JobItem, ModelVersion  # noqa: E402
from db.tenants import create_api_key, create_tenant  # noqa: E402
from scheduler.api.app import build_services, create_app  # noqa: E402
from scheduler.settings import ApiSettings  # noqa: E402
from tests.faults.load import LiveApi  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
# A valid 1x1 grey PNG; each object gets a distinct tEXt-free copy (same bytes are fine: keys differ).
PNG_1X1 = bytes.fromhex(
    "89504e470d0a1a0a0000000d49484452000000010000000108000000003a7e9b55"
    "0000000a49444154789c6360000000020001e221bc330000000049454e44ae426082"
)


def insert_job(factory: object, store: object, tenant_id: str, model_id: int, images: int) -> str:
    """A succeeded job of `images` delivered images (rows and objects), in chunks of 1,000."""
    job_id = uuid.uuid4().hex
    now = dt.datetime.now(dt.UTC)
    with transaction(factory) as session:  # type: ignore[arg-type]
        session.add(
            Job(
                id=job_id, tenant_id=tenant_id, model_version_id=model_id, status=JobStatus.SUCCEEDED, seed=1,
                chunk_size=1000, images_total=images, images_done=images, chunks_total=1, chunks_finished=1,
                started_at=now, finished_at=now,
            )
        )  # fmt: skip
        session.flush()
        item = JobItem(job_id=job_id, position=0, category="a", class_index=0, count=images, first_index=0)
        session.add(item)
        session.flush()
        for start in range(0, images, 1000):
            chunk = Chunk(
                job_id=job_id, item_id=item.id, start_index=start, stop_index=min(images, start + 1000)
            )
            session.add(chunk)
            session.flush()
            rows = []
            for index in range(start, min(images, start + 1000)):
                key = f"{tenant_id}/jobs/{job_id}/a/{index:08d}.png"
                store.put(key, PNG_1X1)  # type: ignore[attr-defined]
                rows.append(
                    {
                        "job_id": job_id, "chunk_id": chunk.id, "index": index, "category": "a", "sku": None,
                        "key": key, "sha256": hashlib.sha256(PNG_1X1).hexdigest(), "size_bytes": len(PNG_1X1),
                        "width": 1, "height": 1, "status": ImageStatus.SUCCEEDED, "score": 0.9, "redraws": 0,
                        "attempt": 1, "created_at": now,
                    }
                )  # fmt: skip
            session.execute(Image.__table__.insert(), rows)  # type: ignore[attr-defined]
    return job_id


def main() -> None:
    """Set up, measure, print."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", default="100,10000", help="job sizes, comma-separated")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    sizes = [int(size) for size in args.images.split(",")]
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="bench-console-") as folder:
        url = f"sqlite:///{folder}/catalogan.db"
        migrate.upgrade(url)
        engine = make_engine(url)
        factory = make_session_factory(engine)
        store = open_store(Path(folder, "objects").as_uri())
        with transaction(factory) as session:
            tenant = create_tenant(session, "bench", requests_per_minute=1_000_000)
            session.flush()
            key = create_api_key(session, tenant.id, name="bench").clear_key
            model = ModelVersion(
                name="tiny",
                version=1,
                preset="tiny",
                checkpoint_uri="memory://x",
                status=ModelVersionStatus.PRODUCTION,
            )
            session.add(model)
            session.flush()
            tenant_id, model_id = tenant.id, model.id
        started = time.perf_counter()
        jobs = {size: insert_job(factory, store, tenant_id, model_id, size) for size in sizes}
        print(f"set-up: {sum(sizes):,} image rows and objects in {time.perf_counter() - started:.1f} s")
        services = build_services(
            ApiSettings(),
            broker=BrokerSettings(broker_url=""),
            data=DataSettings(data_dir=Path(folder) / "data"),
            storage=StorageSettings(storage_url=store.url),
            session_factory=factory,
            store=store,
        )
        api = LiveApi(create_app(ApiSettings(), services=services)).start()
        try:
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
                page = browser.new_page(viewport={"width": 1280, "height": 900})
                page.goto(f"{api.url}/console/sign-in")
                page.get_by_label("API key").fill(key)
                page.get_by_role("button", name="Sign in").click()
                page.wait_for_url(f"{api.url}/console/jobs")
                cookies = {c["name"]: c["value"] for c in page.context.cookies()}
                first_tile: dict[int, list[float]] = {size: [] for size in sizes}
                html: dict[int, list[float]] = {size: [] for size in sizes}
                with httpx.Client(base_url=api.url, cookies=cookies) as client:
                    for _ in range(args.repeats):
                        for size in sizes:
                            page.goto("about:blank")
                            page.goto(f"{api.url}/console/jobs/{jobs[size]}", wait_until="commit")
                            page.wait_for_function(
                                "() => { const i = document.querySelector('#grid img');"
                                " return i && i.complete && i.naturalWidth > 0; }"
                            )
                            timing = page.evaluate(
                                "() => { const i = performance.getEntriesByType('resource')"
                                ".find(e => e.name.includes('/images/') && e.name.endsWith('/file'));"
                                " return i ? i.responseEnd : null; }"
                            )
                            first_tile[size].append(float(timing) / 1000)
                            begin = time.perf_counter()
                            response = client.get(f"/console/jobs/{jobs[size]}")
                            html[size].append(time.perf_counter() - begin)
                            assert response.status_code == 200 and 'id="grid"' in response.text
                browser.close()
        finally:
            api.stop()
            engine.dispose()
    base = sizes[0]
    print(
        f"\n{'images':>8}  {'first tile (median)':>20}  {'ratio':>6}  {'page HTML (median)':>19}  {'ratio':>6}"
    )
    for size in sizes:
        tile, page_html = statistics.median(first_tile[size]), statistics.median(html[size])
        print(
            f"{size:>8,}  {tile * 1000:>17.0f} ms  {tile / statistics.median(first_tile[base]):>6.2f}"
            f"  {page_html * 1000:>16.0f} ms  {page_html / statistics.median(html[base]):>6.2f}"
        )


if __name__ == "__main__":
    main()
