"""Tenant isolation: another tenant's job, images and manifest are 404, and its objects are never presigned."""

from __future__ import annotations

import hashlib
from collections.abc import Callable

from fastapi.testclient import TestClient
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from db.engine import transaction
from db.images import manifest_keys
from db.status import ImageStatus, JobStatus
from db.storage import ObjectStore
from db.tables import Chunk, Image, Job
from tests.scheduler.conftest import Credentials


def add_images(
    factory: sessionmaker[Session], store: ObjectStore, job_id: str, keys: list[str], *, finish: bool = False
) -> list[str]:
    """Image rows (and objects) for a job; returns their sha256s."""
    digests = []
    with transaction(factory) as session:
        chunk_id = session.scalars(select(Chunk.id).where(Chunk.job_id == job_id).order_by(Chunk.id)).first()
        for index, key in enumerate(keys):
            data = f"png-{key}".encode()
            store.put(key, data)
            digests.append(hashlib.sha256(data).hexdigest())
            session.add(
                Image(
                    job_id=job_id,
                    chunk_id=chunk_id,
                    index=index,
                    category="a",
                    key=key,
                    sha256=digests[-1],
                    size_bytes=len(data),
                    status=ImageStatus.SUCCEEDED,
                    attempt=1,
                )
            )
        if finish:
            jsonl, _ = manifest_keys(*session.query(Job.tenant_id, Job.id).filter(Job.id == job_id).one())
            store.put(jsonl, b'{"index": 0}\n')
            session.execute(
                update(Job).where(Job.id == job_id).values(status=JobStatus.SUCCEEDED, manifest_key=jsonl)
            )
    return digests


def test_another_tenants_job_images_and_manifest_are_404(
    api: TestClient,
    make_tenant: Callable[..., Credentials],
    pg_factory: sessionmaker[Session],
    api_store: ObjectStore,
) -> None:
    """Given tenant A's finished job, when tenant B asks for it in any way, then every answer is 404."""
    a, b = make_tenant("a-corp"), make_tenant("b-corp")
    job_id = api.post("/v1/jobs", json={"items": [{"category": "a", "count": 2}]}, headers=a.headers).json()[
        "id"
    ]
    add_images(pg_factory, api_store, job_id, [f"{a.tenant_id}/jobs/{job_id}/a/00000000.png"], finish=True)
    assert api.get(f"/v1/jobs/{job_id}/manifest", headers=a.headers).status_code == 200

    for method, path in [
        ("GET", f"/v1/jobs/{job_id}"),
        ("GET", f"/v1/jobs/{job_id}/images"),
        ("GET", f"/v1/jobs/{job_id}/manifest"),
        ("POST", f"/v1/jobs/{job_id}/cancel"),
        ("POST", f"/v1/jobs/{job_id}/retry"),
    ]:
        response = api.request(method, path, headers=b.headers)
        assert response.status_code == 404, (path, response.text)
        assert a.tenant_id not in response.text
    assert api.get("/v1/jobs", headers=b.headers).json()["data"] == []


def test_a_key_outside_the_tenants_prefix_is_never_presigned(
    api: TestClient,
    make_tenant: Callable[..., Credentials],
    pg_factory: sessionmaker[Session],
    api_store: ObjectStore,
) -> None:
    """Given a row of B's job pointing at A's object, when B lists its images, then that row has no URL."""
    a, b = make_tenant("a-corp"), make_tenant("b-corp")
    job_id = api.post("/v1/jobs", json={"items": [{"category": "a", "count": 2}]}, headers=b.headers).json()[
        "id"
    ]
    own_key = f"{b.tenant_id}/jobs/{job_id}/a/00000000.png"
    foreign_key = f"{a.tenant_id}/jobs/other/a/00000001.png"
    add_images(pg_factory, api_store, job_id, [own_key, foreign_key])

    data = api.get(f"/v1/jobs/{job_id}/images", headers=b.headers).json()["data"]

    by_key = {image["key"]: image for image in data}
    assert by_key[own_key]["url"] and by_key[own_key]["url_expires_at"]
    assert by_key[foreign_key]["url"] is None and by_key[foreign_key]["url_expires_at"] is None


def test_images_come_in_cursor_pages_with_presigned_urls(
    api: TestClient, tenant: Credentials, pg_factory: sessionmaker[Session], api_store: ObjectStore
) -> None:
    """Given five images, when listed two per page, then all five come in index order, each with a URL."""
    job_id = api.post(
        "/v1/jobs", json={"items": [{"category": "a", "count": 5}]}, headers=tenant.headers
    ).json()["id"]
    keys = [f"{tenant.tenant_id}/jobs/{job_id}/a/{i:08d}.png" for i in range(5)]
    digests = add_images(pg_factory, api_store, job_id, keys)
    seen, cursor = [], None
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = api.get(f"/v1/jobs/{job_id}/images", params=params, headers=tenant.headers).json()
        seen += page["data"]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert [image["index"] for image in seen] == [0, 1, 2, 3, 4]
    assert [image["sha256"] for image in seen] == digests
    assert all(image["url"] for image in seen)


def test_a_manifest_before_the_job_finished_is_409(api: TestClient, tenant: Credentials) -> None:
    """Given a queued job, when its manifest is asked for, then 409 says it is written at the end."""
    job_id = api.post(
        "/v1/jobs", json={"items": [{"category": "a", "count": 1}]}, headers=tenant.headers
    ).json()["id"]
    response = api.get(f"/v1/jobs/{job_id}/manifest", headers=tenant.headers)
    assert response.status_code == 409 and "queued" in response.json()["detail"]
