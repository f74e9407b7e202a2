"""API latency on PostgreSQL: `POST /v1/jobs` at 100 / 100k / 1M images and `GET /v1/jobs/{id}`.

    .venv/bin/python bench/bench_api.py --postgres-admin-url postgresql+psycopg://postgres@127.0.0.1:5432/postgres

Runs the real app in-process through its ASGI interface (no network, no worker: chunks are planned in SQL
and the publisher is a no-op), on a `catalogan_bench_api_*` database it creates and drops. Prints one line
per figure and writes `report.md` and `api.png` (median latency per request) into `--out`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
import warnings
from pathlib import Path

from sqlalchemy import text

ROOT = Path(__file__).resolve().parents[1]


def write_report(out: Path, rows: list[tuple[str, float, str]]) -> None:
    """report.md (one row per request: label, median ms, detail) and api.png (the medians as bars)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    lines = ["# API latency (in-process ASGI, PostgreSQL)", "", f"`{' '.join(sys.argv)}`", ""]
    lines += ["| request | median ms | detail |", "|---|---:|---|"]
    lines += [f"| {label} | {median:.1f} | {detail} |" for label, median, detail in rows]
    lines += ["", "![latency](api.png)"]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    figure, axis = plt.subplots(figsize=(8, 3.5))
    bars = axis.barh([label for label, _, _ in rows], [median for _, median, _ in rows])
    axis.bar_label(bars, fmt="%.0f ms", padding=3)
    axis.set_xlabel("median latency (ms)")
    axis.invert_yaxis()
    axis.set_title("catalogan API latency")
    figure.tight_layout()
    figure.savefig(out / "api.png", dpi=100)
    plt.close(figure)


def main() -> None:
    """Measure and print one line per figure."""
    warnings.simplefilter("ignore")  # starlette's TestClient deprecation notice
    from fastapi.testclient import TestClient

    from db import migrate
    from db.engine import make_engine, make_session_factory, transaction
    from db.settings import BrokerSettings, DataSettings, StorageSettings
    from db.status import ModelVersionStatus
    from db.storage import MemoryStore
    from db.tables import ModelVersion
    from db.tenants import create_api_key, create_tenant
    from scheduler.api.app import build_services, create_app
    from scheduler.settings import ApiSettings

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--postgres-admin-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--out", type=Path, default=ROOT / "bench-results" / "api", help="Folder for report.md and api.png."
    )
    args = parser.parse_args()
    rows: list[tuple[str, float, str]] = []

    admin = make_engine(args.postgres_admin_url).execution_options(isolation_level="AUTOCOMMIT")
    name = f"catalogan_bench_api_{uuid.uuid4().hex[:8]}"
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    url = args.postgres_admin_url.rsplit("/", 1)[0] + f"/{name}"
    engine = make_engine(url)
    try:
        migrate.upgrade(url)
        factory = make_session_factory(engine)
        with transaction(factory) as session:
            session.add(
                ModelVersion(
                    name="bench",
                    version=1,
                    preset="tiny",
                    categories=["a"],
                    checkpoint_uri="memory://none",
                    status=ModelVersionStatus.PRODUCTION,
                )
            )
            tenant = create_tenant(
                session, "bench", images_per_day=10**9, max_concurrent_jobs=10**6, requests_per_minute=10**6
            )
            session.flush()
            key = create_api_key(session, tenant.id).clear_key
        services = build_services(
            ApiSettings(),
            broker=BrokerSettings(broker_url=""),
            data=DataSettings(data_dir=Path(tempfile.mkdtemp(prefix="catalogan-bench-"))),
            storage=StorageSettings(storage_url="memory://"),
            session_factory=factory,
            store=MemoryStore(),
            publisher=lambda queue, chunk_ids: None,
        )
        client = TestClient(create_app(services.settings, services=services))
        headers = {"Authorization": f"Bearer {key}"}
        # 100 images, 100k, then 1M as 10 items of 100k (the per-item bound).
        for items, count in ((1, 100), (1, 100_000), (10, 100_000)):
            body = {"items": [{"category": "a", "count": count}] * items, "chunk_size": 256}
            times = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                response = client.post("/v1/jobs", json=body, headers=headers)
                times.append(time.perf_counter() - start)
                assert response.status_code == 201, response.text
            counts = response.json()["counts"]
            median = statistics.median(times) * 1000
            print(
                f"POST /v1/jobs {counts['images_total']:>9} images {counts['chunks_total']:>5} chunks: "
                f"median {median:.0f} ms"
            )
            rows.append(
                (
                    f"POST /v1/jobs, {counts['images_total']:,} images",
                    median,
                    f"{counts['chunks_total']} chunks, median of {args.repeats}",
                )
            )
        job_id = response.json()["id"]
        times = []
        for _ in range(200):
            start = time.perf_counter()
            client.get(f"/v1/jobs/{job_id}", headers=headers)
            times.append(time.perf_counter() - start)
        times.sort()
        print(
            f"GET /v1/jobs/{{id}}: median {statistics.median(times) * 1000:.1f} ms, p95 {times[189] * 1000:.1f} ms"
        )
        rows.append(
            (
                "GET /v1/jobs/{id}",
                statistics.median(times) * 1000,
                f"200 requests, p95 {times[189] * 1000:.1f} ms",
            )
        )
    finally:
        engine.dispose()
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    write_report(args.out, rows)
    print(f"report: {args.out / 'report.md'}, chart: {args.out / 'api.png'}")


if __name__ == "__main__":
    main()
