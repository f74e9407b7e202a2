"""How long one tenant's small job waits behind another tenant's large one (the queue is first in, first out).

    .venv/bin/python bench/bench_fairness.py --large-images 20000 --small-images 10 --workers 1

What it runs, on real services (a fresh PostgreSQL database, a private redis-server, a SeaweedFS S3 server it
starts itself, `--workers` real `catalogan worker` processes with the tiny random-weight model, the API served
by uvicorn in this process):

1. alone: tenant B submits a `--small-images` job to the idle stack; its time from submit to `succeeded`;
2. behind: tenant A submits a `--large-images` job, then, `--gap` seconds later, tenant B submits the same small
   job; B's time from its submit to `succeeded`, and A's.

It prints the three times, and B's wait behind A as a ratio to B alone, then one JSON line. The broker queue is
first in, first out; with the per-tenant publish window (`db.publish_window`, `CATALOGAN_PUBLISH_WINDOW_CHUNKS`)
B's first chunk waits behind at most one window of A's chunks. Before it, every chunk was published at submit
and B's time behind A was about the rest of A's job. Set `CATALOGAN_PUBLISH_WINDOW_CHUNKS=1000000` in the
environment to see that behaviour again.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.faults.load import (  # noqa: E402
    bench_stack,
    load_tenant_headers,
)


def submit(url: str, headers: dict[str, str], images: int, chunk_size: int, seed: int) -> tuple[str, float]:
    """(job id, submit time): one job of `images` images in category a."""
    body = {"items": [{"category": "a", "count": images}], "chunk_size": chunk_size, "seed": seed}
    started = time.monotonic()
    response = httpx.post(f"{url}/v1/jobs", json=body, headers=headers, timeout=120)
    response.raise_for_status()
    return str(response.json()["id"]), started


def wait_succeeded(url: str, headers: dict[str, str], job_id: str, timeout: float) -> float:
    """The time the job was first seen `succeeded` (polled every 0.2 s)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = httpx.get(f"{url}/v1/jobs/{job_id}", headers=headers, timeout=60).json()["status"]
        if status == "succeeded":
            return time.monotonic()
        if status in ("failed", "cancelled", "completed_with_failures"):
            raise RuntimeError(f"job {job_id} ended {status}")
        time.sleep(0.2)
    raise TimeoutError(f"job {job_id} not finished within {timeout:.0f} s")


def main() -> None:
    """Parse the flags, start the services, run both scenarios, print the figures and a JSON line."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--large-images", type=int, default=20_000)
    parser.add_argument("--small-images", type=int, default=10)
    parser.add_argument("--chunk-size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=1, help="`catalogan worker` processes.")
    parser.add_argument("--gap", type=float, default=1.0, help="Seconds between A's submit and B's.")
    parser.add_argument("--timeout", type=float, default=1800.0)
    parser.add_argument(
        "--postgres-admin-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
    )
    args = parser.parse_args()

    with bench_stack("fairness", args.postgres_admin_url, workers=args.workers) as stack:
        api = stack.serve()
        _, a = load_tenant_headers(stack.factory, "large")
        _, b = load_tenant_headers(stack.factory, "small")
        # Warm-up: the workers load the model (not part of any figure).
        job, _ = submit(api.url, b, args.small_images, args.chunk_size, seed=1)
        wait_succeeded(api.url, b, job, args.timeout)

        job, started = submit(api.url, b, args.small_images, args.chunk_size, seed=2)
        alone = wait_succeeded(api.url, b, job, args.timeout) - started

        large, large_started = submit(api.url, a, args.large_images, args.chunk_size, seed=3)
        time.sleep(args.gap)
        small, small_started = submit(api.url, b, args.small_images, args.chunk_size, seed=4)
        behind = wait_succeeded(api.url, b, small, args.timeout) - small_started
        large_seconds = wait_succeeded(api.url, a, large, args.timeout) - large_started

    figures: dict[str, Any] = {
        "large_images": args.large_images,
        "small_images": args.small_images,
        "chunk_size": args.chunk_size,
        "workers": args.workers,
        "small_alone_s": round(alone, 2),
        "small_behind_large_s": round(behind, 2),
        "large_s": round(large_seconds, 2),
        "wait_ratio": round(behind / alone, 1),
    }
    print(f"tenant B's {args.small_images}-image job alone:            {alone:8.1f} s")
    print(f"the same, submitted {args.gap:g} s after tenant A's {args.large_images}: {behind:8.1f} s")
    print(f"tenant A's {args.large_images}-image job:                {large_seconds:8.1f} s")
    print(f"B waits {behind / alone:.1f}x as long behind A as alone")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
