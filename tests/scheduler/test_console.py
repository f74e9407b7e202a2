"""The web console over HTTP (TestClient on the real app, PostgreSQL, an in-memory store): sign-in and its
cookie, CSRF, tenant scoping, expiry, review decisions (SQL, `?review=`, manifest column, `job.reviewed`),
the job and image pages, and the models page with operator-only promote/retire.

The browser tests (Chromium, a live stack with a real worker) are in `test_console_browser.py`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from db.engine import transaction
from db.reviews import ReviewCounts, count_reviews
from db.status import ImageStatus, JobStatus, ModelVersionStatus
from db.storage import ObjectStore
from db.tables import (
    ApiKey,
    Chunk,
    ConsoleSession,
    Image,
    ImageReview,
    Job,
    JobItem,
    ModelVersion,
    Tenant,
    WebhookDelivery,
)
from db.tenants import revoke_api_key
from scheduler.api.limits import MemoryRateLimiter
from scheduler.console import jobs as console_jobs
from scheduler.console.auth import SESSION_COOKIE, SIGN_IN_COOKIE
from scheduler.console.curves import parse_history
from scheduler.console.model_versions import per_category_rows
from scheduler.console.provenance import embedded_provenance
from scheduler.console.settings import ConsoleSettings
from tests.scheduler.conftest import Credentials

pytestmark = pytest.mark.integration


@dataclass(frozen=True)
class FinishedJob:
    """A finished job inserted for the console: its id, and the indices of its delivered images."""

    job_id: str
    delivered: list[int]


def png_bytes(index: int) -> bytes:
    """Distinct bytes standing in for an image (the console serves whatever the store holds)."""
    return b"\x89PNG\r\n\x1a\n" + f"image-{index}".encode()


def insert_finished_job(
    factory: sessionmaker[Session],
    store: ObjectStore,
    tenant_id: str,
    model: ModelVersion,
    *,
    delivered: int = 6,
    rejected: int = 1,
    webhook_url: str | None = None,
) -> FinishedJob:
    """A succeeded job of `delivered` stored images (categories a and b) and `rejected` gate-rejected ones,
    with its manifests written by the workers' own finalize code."""
    from workers.finalize import write_manifests

    job_id = uuid.uuid4().hex
    total = delivered + rejected
    with transaction(factory) as session:
        job = Job(
            id=job_id,
            tenant_id=tenant_id,
            model_version_id=model.id,
            status=JobStatus.SUCCEEDED,
            seed=11,
            chunk_size=total,
            images_total=total,
            images_done=delivered,
            images_rejected=rejected,
            chunks_total=1,
            chunks_finished=1,
            webhook_url=webhook_url,
            started_at=dt.datetime.now(dt.UTC),
            finished_at=dt.datetime.now(dt.UTC),
        )
        session.add(job)
        session.flush()
        item = JobItem(job_id=job_id, position=0, category="a", class_index=0, count=total, first_index=0)
        session.add(item)
        session.flush()
        chunk = Chunk(job_id=job_id, item_id=item.id, start_index=0, stop_index=total)
        session.add(chunk)
        session.flush()
        for index in range(total):
            category = "a" if index % 2 == 0 else "b"
            if index < delivered:
                key = f"{tenant_id}/jobs/{job_id}/{category}/{index:08d}.png"
                data = png_bytes(index)
                store.put(key, data)
                session.add(
                    Image(
                        job_id=job_id, chunk_id=chunk.id, index=index, category=category, sku=f"SKU-{index}",
                        key=key, sha256=hashlib.sha256(data).hexdigest(), size_bytes=len(data), width=8,
                        height=8, status=ImageStatus.SUCCEEDED, score=0.9, redraws=index % 2, attempt=1,
                    )
                )  # fmt: skip
            else:
                session.add(
                    Image(
                        job_id=job_id, chunk_id=chunk.id, index=index, category=category, status=ImageStatus.REJECTED,
                        error="quality gate: score 0.12 < 0.5 after 2 redraws", score=0.12, redraws=2, attempt=1,
                    )
                )  # fmt: skip
        session.flush()
        job.manifest_key = write_manifests(session, store, job)
    return FinishedJob(job_id, list(range(delivered)))


def sign_in(client: TestClient, api_key: str) -> str:
    """Sign `client` in through the form; return the session's CSRF token (read from the page)."""
    form = client.get("/console/sign-in")
    token = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
    assert token is not None
    response = client.post(
        "/console/sign-in",
        data={"api_key": api_key, "csrf_token": token.group(1), "next": "/console/jobs"},
        follow_redirects=False,
    )
    assert response.status_code == 303, response.text
    page = client.get("/console/jobs")
    csrf = re.search(r'data-csrf="([^"]+)"', page.text)
    assert csrf is not None
    return csrf.group(1)


def review(client: TestClient, job_id: str, decision: str, indices: list[int], **extra: str) -> Any:
    """POST a review decision the way the grid's script does (JSON answer)."""
    return client.post(
        f"/console/jobs/{job_id}/reviews",
        data={
            "decision": decision,
            "indices": ",".join(map(str, indices)),
            "csrf_token": client.headers["X-Test-Csrf"],
            **extra,
        },
        headers={"Accept": "application/json"},
    )


# -- sign-in, cookie, CSRF, expiry -----------------------------------------------------------------------


def test_sign_in_sets_an_httponly_strict_expiring_cookie_that_is_not_the_key(
    api: TestClient, tenant: Credentials, pg_factory: sessionmaker[Session]
) -> None:
    """Given the sign-in form, when a valid key is posted, then the browser gets an HttpOnly, SameSite=Strict,
    expiring cookie on /console (not Secure over plain HTTP) that is neither the key nor stored in clear."""
    form = api.get("/console/sign-in")
    token = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
    assert token is not None
    response = api.post(
        "/console/sign-in",
        data={"api_key": tenant.api_key, "csrf_token": token.group(1)},
        follow_redirects=False,
    )
    assert response.status_code == 303 and response.headers["location"] == "/console/jobs"
    cookie = next(h for h in response.headers.get_list("set-cookie") if h.startswith(f"{SESSION_COOKIE}="))
    attributes = {part.strip().split("=")[0].lower() for part in cookie.split(";")}
    assert {"httponly", "max-age", "path"} <= attributes
    assert "samesite=strict" in cookie.lower() and "path=/console" in cookie.lower()
    assert "secure" not in attributes
    value = cookie.split(";")[0].split("=", 1)[1]
    assert tenant.api_key not in cookie and value not in tenant.api_key
    with pg_factory() as session:
        stored = session.scalars(select(ConsoleSession)).one()
    assert stored.token_hash == hashlib.sha256(value.encode()).hexdigest()
    assert dt.timedelta(hours=7) < stored.expires_at - stored.created_at <= dt.timedelta(hours=8)
    assert api.get("/console/jobs", follow_redirects=False).status_code == 200


def test_behind_a_trusted_https_proxy_the_cookie_is_secure(api: TestClient, tenant: Credentials) -> None:
    """Given the console told to trust X-Forwarded-Proto, when the proxy says https, then the cookie is Secure;
    without that setting the header is ignored."""
    headers = {"X-Forwarded-Proto": "https"}
    for trusted, secure in ((False, False), (True, True)):
        api.app.state.console.settings = ConsoleSettings(trust_forwarded_proto=trusted)  # type: ignore[attr-defined]
        api.cookies.clear()
        form = api.get("/console/sign-in", headers=headers)
        token = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
        assert token is not None
        # A Secure cookie is not sent back over plain http by the test client: send it as a browser on https would.
        api.cookies.clear()
        response = api.post(
            "/console/sign-in",
            data={"api_key": tenant.api_key, "csrf_token": token.group(1)},
            headers={**headers, "Cookie": f"{SIGN_IN_COOKIE}={token.group(1)}"},
            follow_redirects=False,
        )
        cookie = next(
            h for h in response.headers.get_list("set-cookie") if h.startswith(f"{SESSION_COOKIE}=")
        )
        assert ("secure" in {p.strip().lower() for p in cookie.split(";")}) is secure


def test_a_wrong_key_or_a_missing_form_token_signs_nobody_in(api: TestClient, tenant: Credentials) -> None:
    """Given the sign-in form, when a wrong key is posted, then 401 and no session cookie; when the form's
    token is missing (a cross-site form), then 403."""
    form = api.get("/console/sign-in")
    token = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
    assert token is not None
    wrong = api.post(
        "/console/sign-in", data={"api_key": "cg_000000000000_nope", "csrf_token": token.group(1)}
    )
    assert wrong.status_code == 401 and "unknown API key" in wrong.text
    assert SESSION_COOKIE not in api.cookies
    forged = api.post("/console/sign-in", data={"api_key": tenant.api_key})
    assert forged.status_code == 403 and SESSION_COOKIE not in api.cookies
    api.cookies.delete(SIGN_IN_COOKIE)


def test_a_review_without_the_csrf_token_is_403_and_changes_nothing(
    console: TestClient, finished: FinishedJob, pg_factory: sessionmaker[Session]
) -> None:
    """Given a signed-in browser, when a review is posted without (or with a wrong) CSRF token, then 403 and
    no decision is stored."""
    url = f"/console/jobs/{finished.job_id}/reviews"
    for data in (
        {"decision": "approved", "indices": "0"},
        {"decision": "approved", "indices": "0", "csrf_token": "x"},
    ):
        assert console.post(url, data=data).status_code == 403
    with pg_factory() as session:
        assert session.scalars(select(ImageReview)).all() == []


def test_an_expired_or_revoked_session_goes_back_to_sign_in(
    console: TestClient, tenant: Credentials, pg_factory: sessionmaker[Session]
) -> None:
    """Given a signed-in browser, when its session expires, then pages redirect to the sign-in page and a POST
    is 401; when the key is revoked, the same."""
    with transaction(pg_factory) as session:
        session.execute(
            update(ConsoleSession).values(expires_at=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1))
        )
    page = console.get("/console/jobs", follow_redirects=False)
    assert page.status_code == 303 and page.headers["location"].startswith("/console/sign-in?next=")
    assert console.post("/console/sign-out", data={"csrf_token": "x"}).status_code == 401
    sign_in(console, tenant.api_key)
    with transaction(pg_factory) as session:
        key_id = session.scalars(select(ApiKey.id).where(ApiKey.tenant_id == tenant.tenant_id)).one()
        revoke_api_key(session, key_id)
    assert console.get("/console/jobs", follow_redirects=False).status_code == 303


def test_sign_out_ends_the_session_on_the_server(
    console: TestClient, pg_factory: sessionmaker[Session]
) -> None:
    """Given a signed-in browser, when it signs out, then its session row is gone and pages ask to sign in."""
    response = console.post(
        "/console/sign-out", data={"csrf_token": console.headers["X-Test-Csrf"]}, follow_redirects=False
    )
    assert response.status_code == 303
    with pg_factory() as session:
        assert session.scalars(select(ConsoleSession)).all() == []
    assert console.get("/console/jobs", follow_redirects=False).status_code == 303


# -- tenant scoping --------------------------------------------------------------------------------------


def test_another_tenants_job_image_file_and_manifest_are_404(
    console: TestClient,
    make_tenant: Callable[..., Credentials],
    pg_factory: sessionmaker[Session],
    api_store: ObjectStore,
    model_version: Any,
) -> None:
    """Given another tenant's finished job, when acme's console asks for any of its URLs, then 404 every time,
    and a review posted for it stores nothing."""
    other = make_tenant("globex")
    theirs = insert_finished_job(pg_factory, api_store, other.tenant_id, model_version)
    base = f"/console/jobs/{theirs.job_id}"
    for url in (base, f"{base}/tiles?after=-1", f"{base}/summary", f"{base}/images/0", f"{base}/images/0/file",
                f"{base}/manifest.jsonl", f"{base}/manifest.parquet"):  # fmt: skip
        assert console.get(url).status_code == 404, url
    assert review(console, theirs.job_id, "approved", [0]).status_code == 404
    with pg_factory() as session:
        assert session.scalars(select(ImageReview)).all() == []
    assert theirs.job_id not in console.get("/console/jobs").text


# -- pages -----------------------------------------------------------------------------------------------


def test_the_jobs_page_offers_only_the_model_versions_this_tenant_used(
    console: TestClient,
    finished: FinishedJob,
    make_tenant: Callable[..., Credentials],
    pg_factory: sessionmaker[Session],
    api_store: ObjectStore,
) -> None:
    """Given acme's job on tiny@1, another tenant's job on tiny@2 and a registered but unused tiny@3, when acme
    opens the jobs list, then its model filter offers tiny@1 alone."""
    with transaction(pg_factory) as session:
        versions = [
            ModelVersion(name="tiny", version=v, preset="tiny", checkpoint_uri="memory://x") for v in (2, 3)
        ]
        session.add_all(versions)
    insert_finished_job(pg_factory, api_store, make_tenant("globex").tenant_id, versions[0])
    page = console.get("/console/jobs").text
    assert re.findall(r'<option value="(tiny@\d+)"', page) == ["tiny@1"]


def test_the_jobs_list_shows_the_job_with_status_progress_counts_and_model(
    console: TestClient, finished: FinishedJob
) -> None:
    """Given a finished job, when the jobs list is opened (and filtered by status and model), then the job is
    listed with its status, full progress, counts and model; another status filter hides it."""
    page = console.get("/console/jobs")
    assert finished.job_id[:12] in page.text and "succeeded" in page.text
    assert 'value="1.0"' in page.text and "6 / 0 / 1 of 7" in page.text and "tiny@1" in page.text
    assert finished.job_id[:12] in console.get("/console/jobs?status=succeeded&model=tiny@1").text
    assert finished.job_id[:12] not in console.get("/console/jobs?status=running").text
    assert console.get("/console/jobs?status=bogus").status_code == 422


def test_the_job_page_labels_tiles_lists_rejected_apart_and_filters(
    console: TestClient, finished: FinishedJob
) -> None:
    """Given a finished job, when its page is opened, then delivered tiles carry index, SKU, category, gate
    score and redraws, the gate-rejected image is listed apart with its reason, and filters narrow the grid."""
    page = console.get(f"/console/jobs/{finished.job_id}").text
    grid = page.split('id="grid"')[1].split("</ul>")[0]
    assert re.findall(r'data-index="(\d+)"', grid) == [str(i) for i in finished.delivered]
    assert (
        "#3" in grid
        and "SKU SKU-3" in grid
        and "gate score 0.9" in grid
        and "redraws 1" in grid
        and ">b<" in grid
    )
    rejected = page.split('id="rejected-title"')[1]
    assert "#6" in rejected and "quality gate: score 0.12 &lt; 0.5 after 2 redraws" in rejected
    only_b = (
        console.get(f"/console/jobs/{finished.job_id}?category=b")
        .text.split('id="grid"')[1]
        .split("</ul>")[0]
    )
    assert re.findall(r'data-index="(\d+)"', only_b) == ["1", "3", "5"]
    assert f"/console/jobs/{finished.job_id}/manifest.parquet" in page


def test_the_grid_pages_on_by_index(console: TestClient, finished: FinishedJob) -> None:
    """Given a page size of 4, when the grid loads, then it shows 4 tiles and the next page continues after
    the last index until none are left."""
    console.app.state.console.settings = ConsoleSettings(page_size=4)  # type: ignore[attr-defined]
    page = console.get(f"/console/jobs/{finished.job_id}").text
    assert 'data-next-after="3"' in page
    more = console.get(f"/console/jobs/{finished.job_id}/tiles?after=3")
    assert re.findall(r'data-index="(\d+)"', more.text) == ["4", "5"] and more.headers["X-Next-After"] == ""


def test_the_image_page_shows_provenance_the_stored_bytes_check_and_the_row(
    console: TestClient, finished: FinishedJob, api_store: ObjectStore, tenant: Credentials
) -> None:
    """Given a delivered image, when its page is opened, then it shows the model version, seed, index, the
    sha256 check of the stored bytes (a match), and its row; after the stored bytes change, a mismatch."""
    url = f"/console/jobs/{finished.job_id}/images/2"
    page = console.get(url).text
    assert "tiny@1" in page and ">11<" in page and 'data-check="match"' in page and "SKU-2" in page
    assert "does not regenerate" in page
    assert console.get(f"{url}/file").content == png_bytes(2)
    api_store.put(f"{tenant.tenant_id}/jobs/{finished.job_id}/a/00000002.png", b"tampered")
    assert 'data-check="no-match"' in console.get(url).text


@pytest.mark.parametrize("output_format", ["png", "webp"])
def test_embedded_provenance_reads_what_the_workers_encoder_wrote(output_format: str) -> None:
    """Given an image encoded by the workers' own encoder, when the console reads its provenance, then it gets
    every field the encoder wrote (backend included), in PNG text chunks and in WebP's XMP packet."""
    import numpy as np

    from workers.encoding import Provenance, encode_image

    provenance = Provenance(
        "tiny@1", "ab" * 32, "f" * 32, 5, 11, "a", "SKU-<5>", redraw=2, inference=(("backend", "eager"),)
    )
    data = encode_image(np.zeros((8, 8, 1), dtype=np.uint8), output_format, provenance)
    fields = embedded_provenance(data)
    assert {key: fields[key] for key in ("model_version", "job_id", "index", "seed", "sku", "redraw", "backend")} == {
        "model_version": "tiny@1", "job_id": "f" * 32, "index": "5", "seed": "11", "sku": "SKU-<5>",
        "redraw": "2", "backend": "eager",
    }  # fmt: skip
    assert embedded_provenance(b"not an image") == {}


def test_a_compressed_text_chunk_is_inflated_only_up_to_its_bound() -> None:
    """Given a PNG whose compressed iTXt value inflates to 64 MiB (64 KiB on disk), when the console reads its
    provenance, then the value is skipped after MAX_TEXT_BYTES of output and nothing near 64 MiB is held;
    a small compressed value still reads."""
    import struct
    import tracemalloc
    import zlib

    from scheduler.console import provenance as console_provenance

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    def itxt(keyword: str, value: bytes) -> bytes:
        return chunk(b"iTXt", keyword.encode() + b"\x00\x01\x00\x00\x00" + zlib.compress(value, 9))

    bomb = (
        console_provenance.PNG_SIGNATURE
        + chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0))
        + itxt("catalogan:sku", b"a" * (64 << 20))
        + itxt("catalogan:seed", b"11")
        + chunk(b"IEND", b"")
    )
    assert len(bomb) < 100_000
    tracemalloc.start()
    try:
        fields = embedded_provenance(bomb)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert fields == {"seed": "11"}
    assert peak < 4 * console_provenance.MAX_TEXT_BYTES


def test_the_image_page_shows_where_the_files_provenance_and_the_rows_disagree(
    console: TestClient,
    finished: FinishedJob,
    api_store: ObjectStore,
    tenant: Credentials,
    pg_factory: sessionmaker[Session],
) -> None:
    """Given image 4 replaced by a file that states seed 12 (the job's seed is 11) with its row updated to the
    new bytes, when its page is opened, then the bytes check passes, the seed row says NO, the others yes."""
    import numpy as np

    from workers.encoding import Provenance, encode_image

    with pg_factory() as session:
        model = session.scalars(select(ModelVersion)).one()
    provenance = Provenance("tiny@1", model.checkpoint_sha256, finished.job_id, 4, 12, "a", "SKU-4")
    data = encode_image(np.zeros((8, 8, 1), dtype=np.uint8), "png", provenance)
    key = f"{tenant.tenant_id}/jobs/{finished.job_id}/a/00000004.png"
    api_store.put(key, data)
    with transaction(pg_factory) as session:
        session.execute(
            update(Image)
            .where(Image.job_id == finished.job_id, Image.index == 4)
            .values(sha256=hashlib.sha256(data).hexdigest(), size_bytes=len(data), redraws=0)
        )
    page = console.get(f"/console/jobs/{finished.job_id}/images/4").text
    assert 'data-check="match"' in page

    def agreement(name: str) -> str:
        row = page.split(f'<tr data-field="{name}">')[1].split("</tr>")[0]
        return "NO" if "NO" in row else "yes" if "yes" in row else "—"

    assert agreement("seed") == "NO"
    assert [agreement(name) for name in ("model_version", "job_id", "index", "category", "sku")] == [
        "yes"
    ] * 5


# -- review ----------------------------------------------------------------------------------------------


def test_review_decisions_reach_sql_the_api_filter_and_the_manifest(
    console: TestClient, finished: FinishedJob, tenant: Credentials, pg_factory: sessionmaker[Session]
) -> None:
    """Given a finished job, when images 0-2 are approved and 3 rejected with a note, then SQL holds who
    decided what, `?review=` lists each state, and both manifests carry the review column."""
    assert review(console, finished.job_id, "approved", [0, 1, 2]).json()["updated"] == 3
    answer = review(console, finished.job_id, "rejected", [3], note="wrong colour").json()
    assert answer["reviews"] == {"approved": 3, "rejected": 1, "pending": 2}
    with pg_factory() as session:
        rows = {row.index: row for row in session.scalars(select(ImageReview))}
        key = session.scalars(select(ApiKey).where(ApiKey.tenant_id == tenant.tenant_id)).one()
    assert {i: r.decision.value for i, r in rows.items()} == {
        0: "approved",
        1: "approved",
        2: "approved",
        3: "rejected",
    }
    assert (
        rows[3].note == "wrong colour"
        and rows[3].reviewer_key_id == key.id
        and rows[3].reviewer_name == "test"
    )
    with pg_factory() as session:  # the counters' shortcut agrees with the exact pass over the image rows
        done = session.scalars(select(Job.images_done).where(Job.id == finished.job_id)).one()
        fast = count_reviews(session, finished.job_id, delivered_total=done)
        assert fast == count_reviews(session, finished.job_id) == ReviewCounts(3, 1, 2)

    def listed(state: str) -> list[int]:
        body = console.get(f"/v1/jobs/{finished.job_id}/images?review={state}", headers=tenant.headers).json()
        return [image["index"] for image in body["data"]]

    assert (listed("approved"), listed("rejected"), listed("pending")) == ([0, 1, 2], [3], [4, 5])
    assert (
        console.get(f"/v1/jobs/{finished.job_id}/images?review=maybe", headers=tenant.headers).status_code
        == 422
    )
    jsonl = console.get(f"/v1/jobs/{finished.job_id}/manifest", headers=tenant.headers).text
    by_index = {row["index"]: row["review"] for row in map(json.loads, jsonl.splitlines())}
    expected = {
        0: "approved",
        1: "approved",
        2: "approved",
        3: "rejected",
        4: "pending",
        5: "pending",
        6: None,
    }
    assert by_index == expected
    parquet = console.get(
        f"/v1/jobs/{finished.job_id}/manifest?format=parquet", headers=tenant.headers
    ).content
    table = pq.read_table(io.BytesIO(parquet)).to_pydict()
    assert dict(zip(table["index"], table["review"], strict=True)) == expected
    csv_text = console.get(f"/console/jobs/{finished.job_id}/manifest.csv").text
    assert csv_text.splitlines()[0].endswith(",review") and csv_text.splitlines()[4].endswith(",rejected")


def test_a_review_of_an_image_that_was_not_delivered_is_refused_whole(
    console: TestClient, finished: FinishedJob, pg_factory: sessionmaker[Session]
) -> None:
    """Given a gate-rejected image 6 and no image 99, when a review names them with delivered ones, then 404
    and nothing is stored; too many or malformed indices are a 422 naming `indices`."""
    assert review(console, finished.job_id, "approved", [0, 6]).status_code == 404
    assert review(console, finished.job_id, "approved", [99]).status_code == 404
    with pg_factory() as session:
        assert session.scalars(select(ImageReview)).all() == []
    bad = review(console, finished.job_id, "approved", [])
    assert bad.status_code == 422 and "indices" in bad.text
    too_many = console.post(
        f"/console/jobs/{finished.job_id}/reviews",
        data={
            "decision": "approved",
            "indices": ",".join(["1"] * 1001),
            "csrf_token": console.headers["X-Test-Csrf"],
        },
    )
    assert too_many.status_code == 422 and "at most 1000" in too_many.text


def test_the_last_decision_puts_one_job_reviewed_event_in_the_outbox(
    monkeypatch: pytest.MonkeyPatch,
    console: TestClient,
    tenant: Credentials,
    pg_factory: sessionmaker[Session],
    api_store: ObjectStore,
    model_version: Any,
) -> None:
    """Given a finished job with a webhook URL, when all but one delivered image are decided, then no
    `job.reviewed` row; when the last one is, exactly one, carrying the counts; deciding again adds none, and
    does not run the exact count of the job's reviews again (it reads every image row under the job's lock:
    on a large reviewed job, every later keystroke paid it)."""
    exact_passes: list[str] = []
    counted = console_jobs.count_reviews

    def count_reviews(session: Session, job_id: str, **kwargs: Any) -> Any:
        if "delivered_total" not in kwargs:
            exact_passes.append(job_id)
        return counted(session, job_id, **kwargs)

    monkeypatch.setattr(console_jobs, "count_reviews", count_reviews)
    job = insert_finished_job(
        pg_factory,
        api_store,
        tenant.tenant_id,
        model_version,
        delivered=3,
        webhook_url="http://127.0.0.1:9/hook",
    )

    def events() -> list[WebhookDelivery]:
        with pg_factory() as session:
            return list(
                session.scalars(select(WebhookDelivery).where(WebhookDelivery.event == "job.reviewed"))
            )

    review(console, job.job_id, "approved", [0, 1])
    assert events() == []
    review(console, job.job_id, "rejected", [2])
    (event,) = events()
    assert event.job_id == job.job_id and event.url == "http://127.0.0.1:9/hook"
    assert event.payload["reviews"] == {"approved": 2, "rejected": 1}
    assert exact_passes == [job.job_id]
    review(console, job.job_id, "approved", [2])
    assert len(events()) == 1
    assert exact_passes == [job.job_id]


def test_the_sdk_filters_images_by_review_state(
    console: TestClient, finished: FinishedJob, tenant: Credentials
) -> None:
    """Given decisions on images 0 and 1, when the SDK iterates with review="approved", then it gets those."""
    from scheduler.client import Client

    review(console, finished.job_id, "approved", [0, 1])
    with Client("http://testserver", api_key=tenant.api_key, transport=console._transport) as client:
        assert [image.index for image in client.iter_images(finished.job_id, review="approved")] == [0, 1]


# -- models ----------------------------------------------------------------------------------------------


SHIPPED_DIR = Path(__file__).resolve().parents[2] / "models" / "weights" / "fashion-cgan"


def insert_shipped_fashion_cgan(factory: sessionmaker[Session]) -> None:
    """Register the shipped fashion-cgan as a candidate row (its files stay in models/weights/, not the store)."""
    folder = SHIPPED_DIR
    metadata = json.loads((folder / "metadata.json").read_text())
    with transaction(factory) as session:
        session.add(
            ModelVersion(
                name="fashion-cgan", version=1, preset="fashion-cgan", architecture="cgan",
                config=metadata["model_config"], categories=metadata["model_config"]["categories"],
                checkpoint_uri="memory://models/fashion-cgan/shipped/generator.pt",
                checkpoint_sha256=(folder / "generator.sha256").read_text().split()[0],
                metrics=metadata["metrics"], status=ModelVersionStatus.CANDIDATE,
            )
        )  # fmt: skip


def test_the_per_category_table_shows_what_was_measured_and_dashes_the_rest() -> None:
    """Given a stored per-category evaluation with a missing real accuracy, a NaN and a category the model has
    but the table lacks, then each category of the model gets a row, and what is not a finite number is None
    (a dash on the page), never a ratio over a missing real accuracy."""
    metrics = {
        "per_class_accuracy": {"shirt": 0.75, "bag": float("nan"), "coat": 0.9},
        "real_per_class_accuracy": {"shirt": 0.8, "coat": 0.0},
        "per_class_fid_fm": "not a table",
    }
    rows = {row["category"]: row for row in per_category_rows(metrics, ["shirt", "bag", "coat", "sandal"])}
    assert list(rows) == ["shirt", "bag", "coat", "sandal"]
    assert rows["shirt"]["ratio"] == pytest.approx(0.9375) and rows["shirt"]["per_class_fid_fm"] is None
    assert rows["bag"]["per_class_accuracy"] is None and rows["bag"]["ratio"] is None
    assert rows["coat"]["ratio"] is None  # a real accuracy of 0 makes no ratio
    assert all(value is None for key, value in rows["sandal"].items() if key != "category")
    assert per_category_rows({"fid_fm": 0.3}, ["shirt"]) == []


def test_the_models_page_shows_metrics_samples_and_curves_from_history(
    console: TestClient, api_store: ObjectStore, pg_factory: sessionmaker[Session], model_version: Any
) -> None:
    """Given tiny@1 with a history.jsonl next to its checkpoint and the shipped fashion-cgan, when the models
    page is opened, then tiny's curves are inline SVG, fashion-cgan shows its metrics, shipped samples and
    loss picture, and a version without history says "no curves recorded"."""
    insert_shipped_fashion_cgan(pg_factory)
    page = console.get("/console/models").text
    assert "no curves recorded" in page
    with transaction(pg_factory) as session:
        session.execute(update(ModelVersion).where(ModelVersion.id == model_version.id).values(
            checkpoint_uri=api_store.uri("models/tiny/run1/generator.pt"),
            metrics={"fid_fm": 1.25, "closest_pairs_png": "/srv/private/pairs.png",
                     "memorization_index": "s3://operator-bucket/index.npz"}))  # fmt: skip
    history = "".join(
        json.dumps({"step": step, "d_loss": 1.0 / step, "g_loss": 2.0 / step, **({"fid_fm": 9.0 / step} if step % 2 == 0 else {})}) + "\n"
        for step in range(1, 11)
    )  # fmt: skip
    api_store.put("models/tiny/run1/history.jsonl", history.encode() + b"not json\n")
    page = console.get("/console/models").text
    assert "tiny@1: losses against step" in page and "tiny@1: FID_fm against step" in page
    assert page.count("<polyline") == 3 and "g_loss (last 0.2)" in page
    shipped = json.loads((SHIPPED_DIR / "metadata.json").read_text())["metrics"]
    assert "conditional_accuracy" in page and f"{shipped['conditional_accuracy']:.4g}" in page
    # The shipped card's per-category evaluation is a table: every category with its generated and real
    # accuracy and their ratio.
    table = page.split('<table class="per-category">', 1)[1].split("</table>", 1)[0]
    shirt = table.split('<th scope="row">shirt</th>', 1)[1].split("</tr>", 1)[0]
    accuracy, real = shipped["per_class_accuracy"]["shirt"], shipped["real_per_class_accuracy"]["shirt"]
    assert shirt.startswith(f"<td>{accuracy:.3g}</td><td>{real:.3g}</td><td>{accuracy / real:.3g}</td>")
    assert table.count('<th scope="row">') == len(shipped["per_class_accuracy"]) == 10
    # Numbers only: paths and storage URIs in the stored card stay the operator's.
    assert "1.25" in page and "/srv/private" not in page and "operator-bucket" not in page
    assert console.get("/console/models/fashion-cgan/1/samples.png").content[:8] == b"\x89PNG\r\n\x1a\n"
    assert console.get("/console/models/fashion-cgan/1/loss.png").status_code == 200
    assert console.get("/console/models/tiny/1/samples.png").status_code == 404


def test_only_operator_keys_promote_or_retire(
    console: TestClient, tenant: Credentials, pg_factory: sessionmaker[Session]
) -> None:
    """Given a tenant key, when the models page is opened, then no promote button shows and a promote POST is
    403 with nothing changed; given the key listed as an operator key, then promote and retire work."""
    insert_shipped_fashion_cgan(pg_factory)
    csrf = {"csrf_token": console.headers["X-Test-Csrf"]}
    assert "Promote to production" not in console.get("/console/models").text
    assert console.post("/console/models/fashion-cgan/1/promote", data=csrf).status_code == 403

    def status() -> str:
        with pg_factory() as session:
            return (
                session.scalars(select(ModelVersion.status).where(ModelVersion.name == "fashion-cgan"))
                .one()
                .value
            )

    assert status() == "candidate"
    with pg_factory() as session:
        key_id = session.scalars(select(ApiKey.id).where(ApiKey.tenant_id == tenant.tenant_id)).one()
    console.app.state.console.settings = ConsoleSettings(operator_key_ids=[key_id])  # type: ignore[attr-defined]
    assert "Promote to production" in console.get("/console/models").text
    assert console.post("/console/models/fashion-cgan/1/promote", data=csrf).status_code == 200  # redirected
    assert status() == "production"
    console.post("/console/models/fashion-cgan/1/retire", data=csrf)
    assert status() == "retired"


def test_a_promotion_below_the_metric_gates_is_refused(
    console: TestClient, tenant: Credentials, pg_factory: sessionmaker[Session]
) -> None:
    """Given an operator key and a candidate whose conditional accuracy is below the default gate (0.9), when
    promote is posted, then it is a 403 naming the metric and the gate, and the version stays a candidate."""
    insert_shipped_fashion_cgan(pg_factory)
    with transaction(pg_factory) as session:
        row = session.scalars(select(ModelVersion).where(ModelVersion.name == "fashion-cgan")).one()
        row.metrics = {**row.metrics, "conditional_accuracy": 0.5}
        key_id = session.scalars(select(ApiKey.id).where(ApiKey.tenant_id == tenant.tenant_id)).one()
    console.app.state.console.settings = ConsoleSettings(operator_key_ids=[key_id])  # type: ignore[attr-defined]

    answer = console.post(
        "/console/models/fashion-cgan/1/promote", data={"csrf_token": console.headers["X-Test-Csrf"]}
    )

    assert answer.status_code == 403 and "conditional_accuracy = 0.5 &lt; gate 0.9" in answer.text
    with pg_factory() as session:
        status = session.scalars(select(ModelVersion.status).where(ModelVersion.name == "fashion-cgan")).one()
    assert status is ModelVersionStatus.CANDIDATE


def test_history_parsing_keeps_losses_and_fid_and_skips_bad_lines() -> None:
    """Given history lines with losses, FID_fm, a line without step and one that is not JSON, when parsed, then
    loss and FID series hold their points and the two bad lines are counted."""
    data = b'{"step": 1, "d_loss": 0.5, "g_loss": 1.5}\n{"step": 2, "d_loss": 0.4, "fid_fm": 3.0}\n{"d_loss": 1}\nx\n'
    history = parse_history(data)
    assert history.losses() == {"d_loss": [(1.0, 0.5), (2.0, 0.4)], "g_loss": [(1.0, 1.5)]}
    assert history.fid() == {"fid_fm": [(2.0, 3.0)]} and history.skipped_lines == 2


def test_console_tables_hold_only_the_hash_of_the_session_token(
    api: TestClient, tenant: Credentials, pg_factory: sessionmaker[Session]
) -> None:
    """Given a sign-in, when the tenants and sessions tables are read, then no column holds the API key."""
    sign_in(api, tenant.api_key)
    with pg_factory() as session:
        rows = [*session.scalars(select(ConsoleSession)), *session.scalars(select(Tenant))]
    assert rows and all(tenant.api_key not in repr(vars(row)) for row in rows)


def test_pages_count_against_the_tenants_rate_limit_but_image_bytes_do_not(
    api: TestClient,
    make_tenant: Callable[..., Credentials],
    pg_factory: sessionmaker[Session],
    api_store: ObjectStore,
    model_version: Any,
) -> None:
    """Given a tenant allowed 4 requests a minute, when it signs in and opens console pages, then the 5th
    request is a 429, while the grid's image bytes keep coming (a person scrolling fetches dozens a second)."""
    slow = make_tenant("slow", requests_per_minute=4)
    job = insert_finished_job(pg_factory, api_store, slow.tenant_id, model_version)
    # One fixed instant, so no minute boundary falls between the requests and resets the window
    api.app.state.services.rate_limiter = MemoryRateLimiter(clock=lambda: 1_000_020.0)  # type: ignore[attr-defined]
    sign_in(api, slow.api_key)  # the sign-in is request 1, the jobs page after it request 2
    assert api.get(f"/console/jobs/{job.job_id}").status_code == 200
    assert api.get(f"/console/jobs/{job.job_id}/images/0").status_code == 200
    assert api.get(f"/console/jobs/{job.job_id}").status_code == 429
    assert all(
        api.get(f"/console/jobs/{job.job_id}/images/{i}/file").status_code == 200 for i in job.delivered
    )


def test_a_tar_jobs_image_is_read_from_its_shard(
    console: TestClient,
    finished: FinishedJob,
    api_store: ObjectStore,
    tenant: Credentials,
    pg_factory: sessionmaker[Session],
) -> None:
    """Given images 0 and 1 whose rows point at a WebDataset shard (a tar job), when the image page and file
    are opened, then the PNG member is served and checked; its tile names the shard instead of loading it."""
    import tarfile

    shard_key = f"{tenant.tenant_id}/jobs/{finished.job_id}/shards/00000000.tar"
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:") as archive:
        for index in (0, 1):
            member = tarfile.TarInfo(f"{index:08d}.png")
            member.size = len(png_bytes(index))
            archive.addfile(member, io.BytesIO(png_bytes(index)))
    api_store.put(shard_key, buffer.getvalue())
    with transaction(pg_factory) as session:
        session.execute(
            update(Image)
            .where(Image.job_id == finished.job_id, Image.index.in_([0, 1]))
            .values(key=shard_key)
        )
    assert console.get(f"/console/jobs/{finished.job_id}/images/1/file").content == png_bytes(1)
    assert 'data-check="match"' in console.get(f"/console/jobs/{finished.job_id}/images/1").text
    grid = console.get(f"/console/jobs/{finished.job_id}").text.split('id="grid"')[1].split("</li>")[0]
    assert "in a tar shard" in grid


def test_jobs_made_from_an_image_are_found_on_sqlite_and_postgresql(
    session_factory: sessionmaker[Session],
) -> None:
    """Given a job, a variation of its image 2 and an interpolation ending at it (same tenant), and another
    tenant's variation of it, when the image's related jobs are looked up, then the tenant's two are found
    (newest first) and each names its source."""
    from db.job_specs import LATENT_CONTROL_OPTION
    from scheduler.console.jobs import jobs_made_from, made_from
    from tests.db.factories import insert_job

    rows = insert_job(session_factory, chunks=1, status=JobStatus.SUCCEEDED)
    source = {"job_id": rows.job_id, "index": 2, "seed": 7, "redraw": 0}
    recipes = {
        "variation": {"variation": {"source": source, "strength": 0.3}},
        "interpolation": {"interpolation": {"start": {**source, "index": 0}, "end": source, "frames": 4}},
    }
    made: dict[str, str] = {}
    with transaction(session_factory) as session:
        parent = session.get(Job, rows.job_id)
        assert parent is not None
        other = Tenant(id=uuid.uuid4().hex, name=f"other-{uuid.uuid4().hex[:6]}")
        session.add(other)
        session.flush()  # the tenant row first: no relationship orders it before the jobs
        for offset, (name, tenant_id) in enumerate(
            [("variation", parent.tenant_id), ("interpolation", parent.tenant_id), ("variation", other.id)]
        ):
            job = Job(
                id=uuid.uuid4().hex, tenant_id=tenant_id, model_version_id=parent.model_version_id, seed=1,
                chunk_size=4, options={LATENT_CONTROL_OPTION: recipes[name]},
                created_at=dt.datetime.now(dt.UTC) + dt.timedelta(seconds=offset),
            )  # fmt: skip
            session.add(job)
            made[f"{name}-{offset}"] = job.id
    with session_factory() as session:
        parent = session.get(Job, rows.job_id)
        assert parent is not None
        found = jobs_made_from(session, parent, 2, parent.tenant_id)
        assert [row["id"] for row in found] == [made["interpolation-1"], made["variation-0"]]
        assert jobs_made_from(session, parent, 1, parent.tenant_id) == []
        variation = session.get(Job, made["variation-0"])
        assert variation is not None
        assert made_from(variation) == [
            {"role": "variation (strength 0.3) of", "job_id": rows.job_id, "index": 2,
             "url": f"/console/jobs/{rows.job_id}/images/2"}
        ]  # fmt: skip


def test_jobs_made_from_an_image_are_looked_for_in_a_bounded_window_of_newer_jobs(
    session_factory: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Given a variation of image 0 and then three plain jobs of the same tenant, when the scan window is 3
    jobs, then the variation is beyond it and not looked at (the page view's cost is bounded by the window,
    not by the tenant's job count); with a window of 4 it is found."""
    from db.job_specs import LATENT_CONTROL_OPTION
    from scheduler.console import jobs as console_jobs
    from tests.db.factories import insert_job

    rows = insert_job(session_factory, chunks=1, status=JobStatus.SUCCEEDED)
    source = {"job_id": rows.job_id, "index": 0, "seed": 7, "redraw": 0}
    start = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1)
    with transaction(session_factory) as session:
        parent = session.get(Job, rows.job_id)
        assert parent is not None
        for offset in range(4):
            options = (
                {LATENT_CONTROL_OPTION: {"variation": {"source": source, "strength": 0.3}}}
                if offset == 0
                else {}
            )
            session.add(
                Job(
                    id=uuid.uuid4().hex, tenant_id=parent.tenant_id, model_version_id=parent.model_version_id,
                    seed=1, chunk_size=4, options=options, created_at=start + dt.timedelta(seconds=offset),
                )
            )  # fmt: skip
    with session_factory() as session:
        parent = session.get(Job, rows.job_id)
        assert parent is not None
        monkeypatch.setattr(console_jobs, "MADE_FROM_SCAN_JOBS", 3)
        assert console_jobs.jobs_made_from(session, parent, 0, parent.tenant_id) == []
        monkeypatch.setattr(console_jobs, "MADE_FROM_SCAN_JOBS", 4)
        assert len(console_jobs.jobs_made_from(session, parent, 0, parent.tenant_id)) == 1


def test_the_image_page_links_the_jobs_made_from_it(
    console: TestClient, finished: FinishedJob, tenant: Credentials, pg_factory: sessionmaker[Session]
) -> None:
    """Given a variation job of image 2 (its recipe in the job's options), when image 2's page is opened, then
    it links the variation job, and image 3's page says none was made from it."""
    from db.job_specs import LATENT_CONTROL_OPTION

    source = {"job_id": finished.job_id, "index": 2, "seed": 11, "redraw": 0}
    variation_id = uuid.uuid4().hex
    with transaction(pg_factory) as session:
        parent = session.get(Job, finished.job_id)
        assert parent is not None
        session.add(
            Job(
                id=variation_id, tenant_id=tenant.tenant_id, model_version_id=parent.model_version_id, seed=5,
                chunk_size=4, options={LATENT_CONTROL_OPTION: {"variation": {"source": source, "strength": 0.3}}},
            )
        )  # fmt: skip
    page = console.get(f"/console/jobs/{finished.job_id}/images/2").text
    assert f'href="/console/jobs/{variation_id}"' in page
    assert "No variation" in console.get(f"/console/jobs/{finished.job_id}/images/3").text
    insert_finished_job_images = console.get(f"/console/jobs/{variation_id}/images/0")
    assert (
        insert_finished_job_images.status_code == 404
    )  # the variation job has no images yet: nothing to open


def test_the_filter_forms_any_choice_is_no_filter(console: TestClient, finished: FinishedJob) -> None:
    """Given the filter forms, when they are submitted with "any" (empty values) or one choice, then the pages
    answer 200 with the matching rows; a value outside the choices is a 422 naming the field."""
    assert finished.job_id[:12] in console.get("/console/jobs?status=&model=").text
    page = console.get(f"/console/jobs/{finished.job_id}?category=&status=&review=")
    assert page.status_code == 200 and len(re.findall(r'<li class="tile', page.text)) == 6
    pending_b = console.get(f"/console/jobs/{finished.job_id}?category=b&status=&review=pending").text
    assert re.findall(r'data-index="(\d+)"', pending_b.split('id="grid"')[1].split("</ul>")[0]) == [
        "1",
        "3",
        "5",
    ]
    bad = console.get(f"/console/jobs/{finished.job_id}?review=maybe")
    assert bad.status_code == 422 and "review" in bad.text


def test_sign_in_returns_only_to_console_pages(api: TestClient, tenant: Credentials) -> None:
    """Given a sign-in link whose `next` points at another site (or a scheme-relative URL), when the key is
    posted, then the browser lands on the jobs list; a console page as `next` is followed."""
    for target, landing in (
        ("https://evil.example/", "/console/jobs"),
        ("//evil.example/console/", "/console/jobs"),
        ("/console/models", "/console/models"),
    ):
        api.cookies.clear()
        form = api.get("/console/sign-in", params={"next": target})
        token = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
        next_field = re.search(r'name="next" value="([^"]+)"', form.text)
        assert token is not None and next_field is not None
        response = api.post(
            "/console/sign-in",
            data={"api_key": tenant.api_key, "csrf_token": token.group(1), "next": target},
            follow_redirects=False,
        )
        assert response.headers["location"] == landing and next_field.group(1) == landing


def test_the_jobs_list_filters_by_metadata_and_shows_it(
    console: TestClient, finished: FinishedJob, pg_factory: sessionmaker[Session]
) -> None:
    """Given a finished job labelled batch=spring, when the jobs list is filtered by metadata, then
    batch=spring lists it with its label, batch=autumn hides it, and a filter that is not key=value is a 422."""
    with transaction(pg_factory) as session:
        session.get(Job, finished.job_id).job_metadata = {"batch": "spring"}
    matching = console.get("/console/jobs?metadata=batch%3Dspring")
    assert matching.status_code == 200 and finished.job_id[:12] in matching.text
    assert "batch=spring" in matching.text.split('id="jobs"')[1]
    assert finished.job_id[:12] not in console.get("/console/jobs?metadata=batch%3Dautumn").text
    assert console.get("/console/jobs?metadata=no-equals-sign").status_code == 422


def test_signing_in_counts_against_the_rate_limit_and_keeps_a_bounded_number_of_sessions(
    api: TestClient, make_tenant: Callable[..., Credentials], pg_factory: sessionmaker[Session]
) -> None:
    """Each sign-in stores a session row: it is a request like any other (the tenant's rate limit), and one key
    keeps at most MAX_SESSIONS_PER_KEY live sessions (the oldest end first)."""
    from sqlalchemy import func

    from db.console_sessions import MAX_SESSIONS_PER_KEY
    from db.tables import ConsoleSession

    def rows(tenant_id: str) -> int:
        with pg_factory() as session:
            return int(session.scalar(select(func.count()).where(ConsoleSession.tenant_id == tenant_id)) or 0)

    def post_sign_in(api_key: str) -> Any:
        api.cookies.clear()
        token = re.search(r'name="csrf_token" value="([^"]+)"', api.get("/console/sign-in").text)
        assert token is not None
        return api.post(
            "/console/sign-in",
            data={"api_key": api_key, "csrf_token": token.group(1), "next": "/console/jobs"},
            follow_redirects=False,
        )

    # Given a tenant allowed 3 requests a minute, when it signs in 4 times
    limited = make_tenant(requests_per_minute=3)
    assert [post_sign_in(limited.api_key).status_code for _ in range(3)] == [303, 303, 303]
    fourth = post_sign_in(limited.api_key)
    # Then the fourth is the sign-in page again with a 429 and Retry-After, and stored nothing
    assert fourth.status_code == 429 and "Retry-After" in fourth.headers, fourth.text
    assert rows(limited.tenant_id) == 3
    # And a tenant with room signing in more often than the cap keeps MAX_SESSIONS_PER_KEY rows, the newest:
    # the session opened last still works
    busy = make_tenant(requests_per_minute=10_000)
    for _ in range(MAX_SESSIONS_PER_KEY + 5):
        assert post_sign_in(busy.api_key).status_code == 303
    assert rows(busy.tenant_id) == MAX_SESSIONS_PER_KEY
    assert api.get("/console/jobs", follow_redirects=False).status_code == 200


def test_manifest_downloads_stream_a_large_manifest_in_pieces(
    pg_factory: sessionmaker[Session],
    api_store: ObjectStore,
    published: list[Any],
    tmp_path: Any,
    model_version: Any,
    make_tenant: Callable[..., Credentials],
) -> None:
    """The console's JSONL and CSV downloads are streamed like the API's manifest: a download of a manifest of
    tens of megabytes (a million-row job's is hundreds) holds a piece of it in memory, not all of it."""
    import tracemalloc

    import httpx

    from db.images import manifest_keys
    from scheduler.settings import ApiSettings, WebhookSettings
    from tests.scheduler.conftest import LiveServer, _app

    owner = make_tenant("big")
    job = insert_finished_job(pg_factory, api_store, owner.tenant_id, model_version)
    jsonl_key, _ = manifest_keys(owner.tenant_id, job.job_id)
    row = {
        "category": "a",
        "key": None,
        "sha256": None,
        "sku": "S" * 40,
        "status": "failed",
        "error": "x" * 600,
    }
    rows = 32_000
    manifest = b"".join(json.dumps({**row, "index": i}).encode() + b"\n" for i in range(rows))
    api_store.put(jsonl_key, manifest)  # ~24 MB
    app = _app(pg_factory, api_store, published, tmp_path, ApiSettings(), WebhookSettings())
    server = LiveServer(app).start()
    try:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            sign_in(client, owner.api_key)  # type: ignore[arg-type]
            for fmt in ("jsonl", "csv"):
                lines = 0
                tracemalloc.start()
                try:
                    with client.stream("GET", f"/console/jobs/{job.job_id}/manifest.{fmt}") as response:
                        assert response.status_code == 200
                        for piece in response.iter_bytes():
                            lines += piece.count(b"\n")
                    peak = tracemalloc.get_traced_memory()[1]
                finally:
                    tracemalloc.stop()
                # Then every row came (CSV: and its header), and the peak is a small part of the manifest
                assert lines == rows + (fmt == "csv"), fmt
                assert peak < len(manifest) / 3, (fmt, peak, len(manifest))
    finally:
        server.stop()


def test_one_image_of_a_large_shard_is_read_as_a_stream(local_store: ObjectStore) -> None:
    """The image-file route has no rate limit (a grid fetches dozens a second), so one image of a tar job's
    shard must not load the shard: it is streamed up to the member, holding a piece and the member."""
    import os
    import tarfile
    import tracemalloc
    from types import SimpleNamespace

    from scheduler.console.jobs import SHARD_READ_BYTES, StoredObjectMissingError, read_image_bytes

    tenant_id = "t" * 32
    key = f"{tenant_id}/jobs/{'j' * 32}/shards/00000000.tar"
    members = {index: os.urandom(200_000) for index in range(150)}  # a 30 MB shard
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:") as archive:
        for index, data in members.items():
            info = tarfile.TarInfo(f"{index:08d}.png")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    local_store.put(key, buffer.getvalue())
    shard_bytes = len(buffer.getvalue())
    del buffer
    console = SimpleNamespace(services=SimpleNamespace(store=local_store))
    user = SimpleNamespace(tenant=SimpleNamespace(id=tenant_id))
    tracemalloc.start()
    try:
        data, media = read_image_bytes(console, user, SimpleNamespace(key=key, index=149))  # type: ignore[arg-type]
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert (data, media) == (members[149], "image/png")
    assert peak < 4 * SHARD_READ_BYTES + 2 * len(members[149]) < shard_bytes / 4, peak
    with pytest.raises(StoredObjectMissingError, match=r"no member 00000150\.png"):
        read_image_bytes(console, user, SimpleNamespace(key=key, index=150))  # type: ignore[arg-type]
