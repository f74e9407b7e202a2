"""Other tenants' latency while one tenant holds 40 previews waiting: the same job load run twice, without and
with the previews, in one process and one run of this script.

    .venv/bin/python bench/bench_hostile_previews.py --submissions 120 --tenants 20 --previews 40

What it runs: the API (uvicorn, in this process) on a fresh PostgreSQL database, a private redis-server, a
SeaweedFS S3 server and `--workers` real `catalogan worker` processes consuming only the `bulk` queue, so no
worker ever answers a preview: each preview waits its whole timeout (`--preview-timeout`, then 503) — the
hostile case of issue 12. The API lets the previewing tenant hold all `--previews` at once (its per-tenant
cap raised to that), so the measurement is of the wait itself, not of the cap refusing most previews.

First a warm-up load (`--concurrency` jobs, not measured: the worker loads its model). Phase 1 (baseline):
`--submissions` clients of `--tenants` tenants (round robin, 20 at a time) each submit a
job and poll `GET /v1/jobs/{id}` every 0.5 s until it finishes. Phase 2: the same load while another tenant
keeps `--previews` previews waiting (each client asks again as soon as one ends). It prints both phases'
p50/p99 of the polls, their ratio (the target is p99 within 2x), the previews' statuses, and one JSON line.
The clients are threads of this process: they share its CPU and GIL with the API, and the box may be shared
with other work, so compare the two phases of one run, not runs across days.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from scheduler.settings import ApiSettings  # noqa: E402
from tests.faults.load import (  # noqa: E402
    LoadReport,
    bench_stack,
    load_tenant_headers,
    run_load,
)


class PreviewFlood:
    """`count` threads of one tenant, each asking for a preview again as soon as its last one answered."""

    def __init__(self, url: str, headers: dict[str, str], count: int) -> None:
        self.url, self.headers, self.count = url, headers, count
        self.stop = threading.Event()
        self.statuses: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(count)]

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=120) as http:
            while not self.stop.is_set():
                try:
                    status = str(
                        http.post(
                            "/v1/previews", json={"category": "a", "count": 1}, headers=self.headers
                        ).status_code
                    )
                except httpx.HTTPError as exc:
                    status = type(exc).__name__
                with self.lock:
                    self.statuses[status] += 1

    def start(self) -> PreviewFlood:
        """Start every client."""
        for thread in self.threads:
            thread.start()
        return self

    def finish(self) -> None:
        """Stop asking and wait for the previews in flight."""
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=300)


def _phase(report: LoadReport) -> dict[str, Any]:
    return {
        "wall_s": round(report.wall_seconds, 1),
        "polls": len(report.poll_seconds),
        "poll_p50_ms": round(report.percentile(report.poll_seconds, 50), 1),
        "poll_p99_ms": round(report.percentile(report.poll_seconds, 99), 1),
        "submit_p99_ms": round(report.percentile(report.submit_seconds, 99), 1),
        "errors": len(report.errors),
        "succeeded": sum(status == "succeeded" for status in report.final_status.values()),
    }


def main() -> None:
    """Start the services, run both phases, print the comparison and a JSON line."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--submissions", type=int, default=120)
    parser.add_argument("--tenants", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--previews", type=int, default=40)
    parser.add_argument("--preview-timeout", type=float, default=10.0)
    parser.add_argument("--images-per-job", type=int, default=2)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument(
        "--postgres-admin-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
    )
    args = parser.parse_args()

    phases: dict[str, dict[str, Any]] = {}
    flood_statuses: Counter[str] = Counter()
    with bench_stack("hostile", args.postgres_admin_url, workers=args.workers, queues="bulk") as stack:
        settings = ApiSettings(
            preview_timeout_seconds=args.preview_timeout, preview_max_concurrent_per_tenant=args.previews
        )
        api = stack.serve(settings)
        headers = [load_tenant_headers(stack.factory, f"tenant{i}")[1] for i in range(args.tenants)]
        hostile = load_tenant_headers(stack.factory, "hostile")[1]
        count = args.images_per_job

        def load() -> LoadReport:
            return run_load(
                api.url,
                headers,
                submissions=args.submissions,
                concurrency=args.concurrency,
                job_body=lambda i: {"items": [{"category": "abc"[i % 3], "count": count}], "seed": i},
                timeout_seconds=600,
            )

        run_load(  # warm-up, not measured: the worker loads its model, connections and caches fill
            api.url,
            headers,
            submissions=args.concurrency,
            concurrency=args.concurrency,
            job_body=lambda i: {"items": [{"category": "abc"[i % 3], "count": count}], "seed": 10_000 + i},
            timeout_seconds=600,
        )
        phases["without_previews"] = _phase(load())
        flood = PreviewFlood(api.url, hostile, args.previews).start()
        time.sleep(min(2.0, args.preview_timeout / 2))  # every preview client is now waiting
        try:
            phases["with_previews"] = _phase(load())
        finally:
            flood.finish()
        flood_statuses = flood.statuses
    base, loaded = phases["without_previews"], phases["with_previews"]
    ratio = loaded["poll_p99_ms"] / base["poll_p99_ms"] if base["poll_p99_ms"] else float("inf")
    for name, figures in phases.items():
        print(
            f"{name:17} polls {figures['polls']:5}  GET /v1/jobs/{{id}} p50 {figures['poll_p50_ms']:7.1f} ms  "
            f"p99 {figures['poll_p99_ms']:7.1f} ms  errors {figures['errors']}  "
            f"succeeded {figures['succeeded']}/{args.submissions}  wall {figures['wall_s']} s"
        )
    print(
        f"p99 with / without previews: {ratio:.2f}x (target <= 2x); previews answered: {dict(flood_statuses)}"
    )
    print(
        json.dumps(
            {**vars(args), **phases, "p99_ratio": round(ratio, 2), "preview_answers": dict(flood_statuses)}
        )
    )
    sys.exit(0 if ratio <= 2 and not base["errors"] and not loaded["errors"] else 1)


if __name__ == "__main__":
    main()
