"""The console in a real browser: Debian's Chromium driven by Playwright, against uvicorn serving the real app
on PostgreSQL, Redis and SeaweedFS S3, with a real `catalogan worker` that generated the images.

One live stack per module (the worker and two finished jobs are made once); the tests share one browser.
Screenshots of the job page and the models page land in the pytest temp folder (`console-screenshots/`).
"""

from __future__ import annotations

import io
import json
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pyarrow.parquet as pq
import pytest
from sqlalchemy import select, text, update
from sqlalchemy.orm import Session, sessionmaker

from db import migrate
from db.engine import make_engine, make_session_factory, transaction
from db.jobs import transition_job
from db.settings import BrokerSettings, DataSettings, StorageSettings
from db.status import JobStatus
from db.storage import ObjectStore, open_store
from db.tables import Base, ConsoleSession, ImageReview, Job, ModelVersion, utcnow
from db.tenants import create_api_key, create_tenant
from scheduler.api.app import build_services, create_app
from scheduler.client import Client
from scheduler.settings import ApiSettings, WebhookSettings
from tests.conftest import in_ci
from tests.pipeline import ServiceProcess, make_model_version, pipeline_env, tiny_checkpoint, wait_for
from tests.scheduler.conftest import LiveServer
from tests.scheduler.test_console import insert_shipped_fashion_cgan
from tests.services import TEST_BUCKET, SeaweedFS, flush_keeping_claim

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CHROMIUM = "/usr/bin/chromium"
ITEMS = [{"category": "a", "count": 8, "sku": "SKU-A"}, {"category": "b", "count": 8}]


@dataclass
class Tenant:
    """A tenant of the stack: id, API key (and its id), and one finished job."""

    tenant_id: str
    api_key: str
    key_id: str
    job_id: str = ""


@dataclass
class ConsoleStack:
    """The live stack and the browser page the tests drive."""

    url: str
    factory: sessionmaker[Session]
    store: ObjectStore
    acme: Tenant
    globex: Tenant
    page: Any  # playwright.sync_api.Page
    screenshots: Path


def _truncate(url: str) -> None:
    if migrate.current(url) != migrate.head_revision():
        migrate.upgrade(url)
    engine = make_engine(url, pool_size=1)
    tables = ", ".join(f'"{table.name}"' for table in Base.metadata.sorted_tables)
    with engine.begin() as connection:
        connection.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    engine.dispose()


def _tenant(factory: sessionmaker[Session], name: str) -> Tenant:
    with transaction(factory) as session:
        tenant = create_tenant(session, f"{name}-{uuid.uuid4().hex[:6]}")
        session.flush()
        key = create_api_key(session, tenant.id, name="catalog-team")
    return Tenant(tenant.id, key.clear_key, key.key_id)


def _submit(url: str, tenant: Tenant) -> str:
    response = httpx.post(
        f"{url}/v1/jobs",
        json={"model": "tiny@1", "items": ITEMS, "seed": 3},
        headers={"Authorization": f"Bearer {tenant.api_key}"},
        timeout=30,
    )
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def _history() -> bytes:
    """A short training history next to tiny's checkpoint, in the layout of docs/training.md (losses and
    throughput every 10 steps, FID_fm and per-category accuracy every 50)."""
    lines = [
        {"step": step, "d_loss": 1.4 - step / 400, "g_loss": 0.7 + step / 500, "steps_per_s": 12.5}
        | ({"fid_fm": 40.0 / (1 + step / 50), "per_category_accuracy": {"a": 0.5}} if step % 50 == 0 else {})
        for step in range(0, 201, 10)
    ]
    return "".join(json.dumps(line) + "\n" for line in lines).encode()


@pytest.fixture(scope="module")
def stack(
    pg_database_url: str,
    _redis_db: tuple[Any, str],
    seaweedfs: SeaweedFS,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ConsoleStack]:
    """PostgreSQL, Redis, SeaweedFS, uvicorn and a worker; two tenants with one finished 16-image job each;
    Chromium signed out on a blank page."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:  # pragma: no cover - a dev extra
        if in_ci():
            raise
        pytest.skip("playwright is not installed")
    if not Path(CHROMIUM).exists():
        if in_ci():
            pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium")
        pytest.skip(f"{CHROMIUM} is missing: apt-get install -y chromium")
    folder = tmp_path_factory.mktemp("console-stack")
    redis_client, redis_url = _redis_db
    flush_keeping_claim(redis_client)
    _truncate(pg_database_url)
    engine = make_engine(pg_database_url)
    factory = make_session_factory(engine)
    s3_env = seaweedfs.env()
    with pytest.MonkeyPatch.context() as patch:
        for name, value in s3_env.items():
            patch.setenv(name, value)
        patch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
        patch.delenv("AWS_PROFILE", raising=False)
        store = open_store(f"s3://{TEST_BUCKET}/t-{uuid.uuid4().hex[:12]}")
        make_model_version(factory, checkpoint=tiny_checkpoint(seed=1), store=store)
        store.put("models/tiny/1/history.jsonl", _history())
        insert_shipped_fashion_cgan(factory)
        acme, globex = _tenant(factory, "acme"), _tenant(factory, "globex")
        worker = ServiceProcess(
            ["worker", "--queues", "interactive,bulk"],
            pipeline_env(
                CATALOGAN_DATABASE_URL=pg_database_url,
                CATALOGAN_STORAGE_URL=store.url,
                CATALOGAN_BROKER_URL=redis_url,
                CATALOGAN_DATA_DIR=str(folder / "worker-data"),
                CATALOGAN_DEVICE="cpu",
                CATALOGAN_UPLOAD_THREADS="2",
                **s3_env,
            ),
            folder / "worker.log",
        )
        settings = ApiSettings()
        services = build_services(
            settings,
            webhooks=WebhookSettings(webhook_allow_private_targets=True),
            broker=BrokerSettings(broker_url=redis_url),
            data=DataSettings(data_dir=folder / "api-data"),
            storage=StorageSettings(storage_url=store.url),
            session_factory=factory,
            store=store,
        )
        server = LiveServer(create_app(settings, services=services)).start()
        playwright = sync_playwright().start()
        browser = None
        try:
            acme.job_id, globex.job_id = _submit(server.url, acme), _submit(server.url, globex)

            def finished() -> bool:
                with factory() as session:
                    jobs = session.scalars(select(Job).where(Job.id.in_([acme.job_id, globex.job_id]))).all()
                    return all(job.status.is_terminal for job in jobs)

            try:
                wait_for(finished, timeout=180, what="both jobs to finish")
            except AssertionError:
                print(worker.log()[-4000:])
                raise
            browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.set_default_timeout(15_000)
            yield ConsoleStack(
                server.url, factory, store, acme, globex, page, tmp_path_factory.mktemp("console-screenshots")
            )
        finally:
            if browser is not None:
                browser.close()
            playwright.stop()
            server.stop()
            code = worker.stop()
            engine.dispose()
            flush_keeping_claim(redis_client)
            if os.environ.get("CATALOGAN_TEST_SHOW_WORKER_LOG"):
                print(worker.log())
            assert code in (0, -15, 143), f"worker exited with {code}:\n{worker.log()[-3000:]}"


def sign_in(stack: ConsoleStack, api_key: str) -> None:
    """Sign in through the form, as a person would."""
    page = stack.page
    page.goto(f"{stack.url}/console/jobs")
    assert "/console/sign-in" in page.url
    page.get_by_label("API key").fill(api_key)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"{stack.url}/console/jobs")


# The grid's images are `loading="lazy"`: the page's load event does not wait for them, so wait for the image's
# own load (or fail on its error) instead of reading `complete` at once.
LOADED_WIDTH = """img => (img.complete && img.naturalWidth) ? img.naturalWidth : new Promise((resolve, reject) => {
    img.addEventListener("load", () => resolve(img.naturalWidth));
    img.addEventListener("error", () => reject(new Error("image failed to load: " + img.src)));
})"""


def loaded_width(image: Any) -> int:  # a playwright.sync_api.Locator
    """The natural width of an <img> once it has loaded."""
    return int(image.evaluate(LOADED_WIDTH))


def test_sign_in_open_a_finished_job_and_review_with_the_keyboard(stack: ConsoleStack) -> None:
    """Given acme's finished 16-image job, when a person signs in, opens the job from the list, approves images
    0-2 and rejects image 3 with the keyboard, then SQL, the manifest's review column (JSONL and Parquet) and
    `?review=approved` (over the SDK) agree; screenshots of the job and models pages are saved."""
    page = stack.page
    # The console's Content-Security-Policy allows its own script and style only: nothing it uses is refused.
    refused: list[str] = []
    page.on(
        "console",
        lambda message: refused.append(message.text) if "Content Security Policy" in message.text else None,
    )
    sign_in(stack, stack.acme.api_key)
    row = page.locator("#jobs tbody tr", has_text=stack.acme.job_id[:12])
    assert "succeeded" in row.inner_text() and "16 / 0 / 0 of 16" in row.inner_text()
    assert stack.globex.job_id[:12] not in page.content()
    row.get_by_role("link").click()
    page.wait_for_url(f"{stack.url}/console/jobs/{stack.acme.job_id}")
    tiles = page.locator("#grid li.tile")
    assert tiles.count() == 16
    assert "#0" in tiles.nth(0).inner_text() and "SKU SKU-A" in tiles.nth(0).inner_text()
    assert loaded_width(page.locator("#grid img").first) == 8

    tiles.nth(0).locator("a.tile-link").focus()
    decided = 0
    for key in ("a", "ArrowRight", "a", "ArrowRight", "a", "ArrowRight", "r"):
        page.keyboard.press(key)
        if key in ("a", "r"):  # each decision is saved (the tile changes) before the next key
            decided += 1
            page.wait_for_function(
                "n => document.querySelectorAll('#grid li.review-approved, #grid li.review-rejected').length === n",
                arg=decided,
            )
    page.wait_for_function("() => document.querySelectorAll('#grid li.review-rejected').length === 1")
    page.wait_for_function("() => document.querySelectorAll('#grid li.review-approved').length === 3")
    assert "Rejected image 3" in page.locator("#review-status").inner_text()
    assert "3 approved, 1 rejected, 12 pending" in page.locator('[data-field="reviews"]').inner_text()
    page.screenshot(path=stack.screenshots / "console-job.png", full_page=True)
    page.set_viewport_size({"width": 390, "height": 844})
    page.screenshot(path=stack.screenshots / "console-job-390.png", full_page=True)
    page.set_viewport_size({"width": 1280, "height": 900})

    with stack.factory() as session:
        rows = session.scalars(select(ImageReview).where(ImageReview.job_id == stack.acme.job_id)).all()
    assert {row.index: row.decision.value for row in rows} == {
        0: "approved",
        1: "approved",
        2: "approved",
        3: "rejected",
    }
    assert {(row.reviewer_key_id, row.reviewer_name) for row in rows} == {(stack.acme.key_id, "catalog-team")}
    expected = {index: "pending" for index in range(16)} | {
        0: "approved",
        1: "approved",
        2: "approved",
        3: "rejected",
    }
    with Client(stack.url, api_key=stack.acme.api_key) as client:
        manifest = {row["index"]: row["review"] for row in client.manifest_rows(stack.acme.job_id)}
        parquet = pq.read_table(
            io.BytesIO(client.get_manifest(stack.acme.job_id, format="parquet"))
        ).to_pydict()
        approved = [image.index for image in client.iter_images(stack.acme.job_id, review="approved")]
    assert manifest == expected
    assert dict(zip(parquet["index"], parquet["review"], strict=True)) == expected
    assert approved == [0, 1, 2]

    # The image page of a worker-made image: the stored bytes match the row, the file's provenance agrees
    page.goto(f"{stack.url}/console/jobs/{stack.acme.job_id}/images/0")
    assert page.locator("[data-check]").get_attribute("data-check") == "match"
    agreement = page.locator("table.provenance tbody td:nth-child(4)").all_inner_texts()
    assert agreement.count("yes") >= 6 and "NO" not in agreement
    assert page.locator('tr[data-field="backend"] td').first.inner_text() not in ("", "—")
    page.screenshot(path=stack.screenshots / "console-image.png", full_page=True)

    page.goto(f"{stack.url}/console/models")
    assert (
        page.locator("svg.curve").count() == 2
    )  # tiny: losses, FID_fm from history.jsonl next to the checkpoint
    shipped = page.locator("article.model", has_text="fashion-cgan@1")
    assert loaded_width(shipped.locator("img").nth(0)) > 100  # samples.png
    assert "conditional_accuracy" in shipped.inner_text()
    assert page.get_by_role("button", name="Promote to production").count() == 0  # a tenant key looks only
    page.screenshot(path=stack.screenshots / "console-models.png", full_page=True)
    assert all(
        (stack.screenshots / name).stat().st_size > 10_000
        for name in ("console-job.png", "console-models.png")
    )
    assert refused == []


def test_another_tenants_job_is_404_and_a_post_without_csrf_is_403(stack: ConsoleStack) -> None:
    """Given acme signed in, when the browser opens globex's job URL, then 404; when a review is posted with
    acme's cookie but without the CSRF token, then 403 and nothing is stored."""
    page = stack.page
    if "/console/sign-in" in (page.goto(f"{stack.url}/console/jobs") or page).url:
        sign_in(stack, stack.acme.api_key)
    response = page.goto(f"{stack.url}/console/jobs/{stack.globex.job_id}")
    assert response is not None and response.status == 404
    assert page.locator("h1").inner_text() == "Not found"
    with stack.factory() as session:
        before = session.scalars(select(ImageReview)).all()
    forged = page.context.request.post(
        f"{stack.url}/console/jobs/{stack.acme.job_id}/reviews",
        form={"decision": "rejected", "indices": "5"},
    )
    assert forged.status == 403
    with stack.factory() as session:
        assert len(session.scalars(select(ImageReview)).all()) == len(before)


def test_the_jobs_list_follows_a_running_job_without_a_reload(stack: ConsoleStack) -> None:
    """Given a running job of acme's in the jobs list, when its counters move and it finishes, then its row
    shows the new counts and status after a poll, without the page reloading."""
    page = stack.page
    if "/console/sign-in" in (page.goto(f"{stack.url}/console/jobs") or page).url:
        sign_in(stack, stack.acme.api_key)
    job_id = uuid.uuid4().hex
    with transaction(stack.factory) as session:
        model_id = session.scalars(select(ModelVersion.id).where(ModelVersion.name == "tiny")).one()
        session.add(
            Job(
                id=job_id, tenant_id=stack.acme.tenant_id, model_version_id=model_id, status=JobStatus.RUNNING,
                seed=5, chunk_size=10, images_total=10, images_done=2, chunks_total=1, started_at=utcnow(),
            )
        )  # fmt: skip
    page.goto(f"{stack.url}/console/jobs")
    row = page.locator("#jobs tbody tr", has_text=job_id[:12])
    assert "running" in row.inner_text() and "2 / 0 / 0 of 10" in row.inner_text()
    page.evaluate("window.stillTheSamePage = true")
    with transaction(stack.factory) as session:
        session.execute(update(Job).where(Job.id == job_id).values(images_done=10, chunks_finished=1))
        transition_job(session, job_id, JobStatus.SUCCEEDED)
    page.wait_for_function(
        "id => [...document.querySelectorAll('#jobs tbody tr')].some("
        "tr => tr.textContent.includes(id) && tr.textContent.includes('succeeded'))",
        arg=job_id[:12],
        timeout=10_000,
    )
    assert "10 / 0 / 0 of 10" in row.inner_text()
    assert page.evaluate("window.stillTheSamePage") is True


def test_an_expired_session_lands_on_the_sign_in_page(stack: ConsoleStack) -> None:
    """Given a signed-in browser, when its session's expiry passes, then opening a job shows the sign-in page,
    and signing in again returns to that job."""
    page = stack.page
    if "/console/sign-in" in (page.goto(f"{stack.url}/console/jobs") or page).url:
        sign_in(stack, stack.acme.api_key)
    with transaction(stack.factory) as session:
        session.execute(update(ConsoleSession).values(expires_at=ConsoleSession.created_at))
    page.goto(f"{stack.url}/console/jobs/{stack.acme.job_id}")
    assert "/console/sign-in" in page.url and page.get_by_label("API key").is_visible()
    page.get_by_label("API key").fill(stack.acme.api_key)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"{stack.url}/console/jobs/{stack.acme.job_id}")
