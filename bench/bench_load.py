"""A bounded load test on loopback: concurrent job submissions plus status polling through the HTTP API.

    .venv/bin/python bench/bench_load.py --submissions 200 --concurrency 200 --images-per-job 2

What it runs: the API (uvicorn, in this process) on a fresh PostgreSQL database with `--pool-size` pooled
connections (plus as many overflow; 5 is the production default), a private redis-server on a free port (or
`--redis-url`), a SeaweedFS S3 server it starts itself, and `--workers` real `catalogan worker` processes with
a tiny random-weight model. Each of `--submissions` clients (`--concurrency` at a time) submits one job
(tenants taken round robin, `--tenants`; the default is one tenant for all) and polls `GET /v1/jobs/{id}`
every 0.5 s until it finishes. It prints the p50/p99 latency of both requests, the error count (the target
is 0) and whether every job succeeded, then one JSON line, and writes `report.md` and `load.png` (latency
over the run, latency distribution) into `--out`. The clients are threads of this same process, so they
share its CPU and GIL with the API: the latencies are an upper bound for the API itself.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


from tests.faults.load import (  # noqa: E402
    LoadReport,
    bench_stack,
    load_tenant_headers,
    run_load,
)


def summary_figures(args: argparse.Namespace, report: LoadReport) -> dict[str, Any]:
    """The run's figures, as printed in the JSON line."""
    return {
        "submissions": args.submissions,
        "concurrency": args.concurrency,
        "images_per_job": args.images_per_job,
        "workers": args.workers,
        "tenants": args.tenants,
        "pool_size": args.pool_size,
        "wall_s": round(report.wall_seconds, 2),
        "submit_p50_ms": round(report.percentile(report.submit_seconds, 50), 1),
        "submit_p99_ms": round(report.percentile(report.submit_seconds, 99), 1),
        "poll_p50_ms": round(report.percentile(report.poll_seconds, 50), 1),
        "poll_p99_ms": round(report.percentile(report.poll_seconds, 99), 1),
        "polls": len(report.poll_seconds),
        "errors": len(report.errors),
        "succeeded": sum(status == "succeeded" for status in report.final_status.values()),
    }


def write_report(out: Path, figures: dict[str, Any], report: LoadReport) -> None:
    """report.md (setup, latency table, errors) and load.png (latency over the run; latency distribution)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    kinds = [("POST /v1/jobs", report.submit_seconds, report.submit_at)]
    kinds.append(("GET /v1/jobs/{id}", report.poll_seconds, report.poll_at))
    lines = [
        "# API load on loopback",
        "",
        f"`{' '.join(sys.argv)}`",
        "",
        f"{figures['submissions']} submissions, {figures['concurrency']} clients at a time, "
        f"{figures['tenants']} tenant(s), {figures['images_per_job']} images per job, "
        f"{figures['workers']} worker(s), API pool {figures['pool_size']} + {figures['pool_size']} connections. "
        f"Wall time {figures['wall_s']:.1f} s.",
        "",
        f"**Errors: {figures['errors']}.** Jobs succeeded: {figures['succeeded']}/{figures['submissions']}.",
        "",
        "| request | answered | p50 ms | p90 ms | p99 ms | max ms |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, seconds, _ in kinds:
        lines.append(
            f"| `{name}` | {len(seconds)} | {report.percentile(seconds, 50):.1f} | "
            f"{report.percentile(seconds, 90):.1f} | {report.percentile(seconds, 99):.1f} | "
            f"{max(seconds, default=0) * 1000:.1f} |"
        )
    if report.errors:
        lines += ["", "First errors:", ""]
        lines += [f"- `{error[:160]}`" for error in report.errors[:10]]
    lines += ["", "![latency](load.png)"]
    (out / "report.md").write_text("\n".join(lines) + "\n")

    figure, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name, seconds, at in kinds:
        axes[0].scatter(at, [value * 1000 for value in seconds], s=4, alpha=0.5, label=name)
        ordered = sorted(value * 1000 for value in seconds)
        if ordered:
            axes[1].plot(ordered, [(i + 1) / len(ordered) for i in range(len(ordered))], label=name)
    axes[0].set_xlabel("seconds since the first request")
    axes[0].set_ylabel("latency (ms)")
    axes[0].set_yscale("log")
    axes[0].set_title("Latency of each request over the run")
    axes[0].legend()
    axes[1].set_xscale("log")
    axes[1].set_xlabel("latency (ms)")
    axes[1].set_ylabel("fraction of requests")
    axes[1].set_title(f"Latency distribution; errors: {figures['errors']}")
    axes[1].legend()
    figure.tight_layout()
    figure.savefig(out / "load.png", dpi=100)
    plt.close(figure)


def main() -> None:
    """Parse the flags, start the services, run the load, print the summary and a JSON line, write the report."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--submissions", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--images-per-job", type=int, default=2)
    parser.add_argument(
        "--tenants", type=int, default=1, help="Spread the clients over this many tenants (round robin)."
    )
    parser.add_argument("--workers", type=int, default=1, help="`catalogan worker` processes.")
    parser.add_argument(
        "--pool-size",
        type=int,
        default=5,
        help="The API's pooled database connections (as many again overflow); 5 is the production default.",
    )
    parser.add_argument(
        "--timeout", type=float, default=900.0, help="Seconds before unfinished jobs count as errors."
    )
    parser.add_argument(
        "--postgres-admin-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
    )
    parser.add_argument("--redis-url", default="", help="Default: a private redis-server on a free port.")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "bench-results" / "load", help="Folder for report.md and load.png."
    )
    args = parser.parse_args()

    with bench_stack(
        "load",
        args.postgres_admin_url,
        workers=args.workers,
        redis_url=args.redis_url,
        pool_size=args.pool_size,
    ) as stack:
        api = stack.serve()
        headers = [load_tenant_headers(stack.factory, f"load{i}")[1] for i in range(args.tenants)]
        count = args.images_per_job
        report = run_load(
            api.url,
            headers,
            submissions=args.submissions,
            concurrency=args.concurrency,
            job_body=lambda i: {"items": [{"category": "abc"[i % 3], "count": count}], "seed": i},
            timeout_seconds=args.timeout,
        )
    print(report.summary())
    for error in report.errors[:10]:
        print("error:", error)
    figures = summary_figures(args, report)
    print(json.dumps(figures))
    write_report(args.out, figures, report)
    print(f"report: {args.out / 'report.md'}, chart: {args.out / 'load.png'}")
    sys.exit(1 if report.errors else 0)


if __name__ == "__main__":
    main()
