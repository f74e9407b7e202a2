"""ETL example: give every SKU of a catalog export that lacks an image a generated one.

    CATALOGAN_API_URL=http://localhost:8000 CATALOGAN_API_KEY=cg_... \\
        python docs/examples/etl_catalog.py catalog.csv images.csv --per-sku 2 --seed 7

Input: a catalog CSV with at least `sku` and `category` columns; rows whose `image_url` column is empty (or
missing) lack an image. Output: one CSV row per generated image — sku, category, index, key, sha256, seed,
model_version, status — i.e. the job's manifest, ready to load back into the catalog. Re-running with the
same input and seed is safe: the Idempotency-Key is derived from them, so the API returns the same job.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import os
import sys
from pathlib import Path
from typing import Any

from scheduler.client import Client, Job

OUTPUT_COLUMNS = ("sku", "category", "index", "key", "sha256", "seed", "model_version", "status", "error")


def skus_lacking_images(catalog: Path) -> list[dict[str, str]]:
    """The catalog rows whose `image_url` is empty."""
    with catalog.open(newline="", encoding="utf-8-sig") as handle:
        return [row for row in csv.DictReader(handle) if not (row.get("image_url") or "").strip()]


def job_items(rows: list[dict[str, str]], per_sku: int) -> list[dict[str, Any]]:
    """One job item per SKU: `per_sku` images of its category."""
    return [
        {"sku": row["sku"].strip(), "category": row["category"].strip(), "count": per_sku} for row in rows
    ]


def idempotency_key(catalog: Path, per_sku: int, seed: int | None) -> str:
    """Same input file + options → same key → the API returns the job it already made."""
    digest = hashlib.sha256(catalog.read_bytes() + f"|{per_sku}|{seed}".encode()).hexdigest()
    return f"etl-{digest[:40]}"


def write_manifest_csv(rows: list[dict[str, Any]], out: Path) -> None:
    """Write manifest rows as CSV with the columns a catalog loader expects."""
    with out.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=OUTPUT_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(sorted(rows, key=lambda row: row["index"]))


def run(
    catalog: Path,
    out: Path,
    *,
    client: Client,
    per_sku: int = 1,
    seed: int | None = None,
    model: str | None = None,
) -> Job:
    """Submit one job for the SKUs lacking images, wait for it, write its manifest to `out`; return the job."""
    rows = skus_lacking_images(catalog)
    if not rows:
        raise SystemExit(f"{catalog}: every SKU already has an image")
    job = client.submit_job(
        job_items(rows, per_sku),
        seed=seed,
        model=model,
        idempotency_key=idempotency_key(catalog, per_sku, seed),
    )
    print(f"job {job.id}: {job.images_total} images for {len(rows)} SKUs", file=sys.stderr)

    def report(current: Job) -> None:
        print(
            f"  {current.status:<10} {current.progress:6.1%}  eta {current.eta_seconds or '-'} s",
            file=sys.stderr,
        )

    job = client.wait(job, progress=report, poll_seconds=2.0)
    if job.status != "succeeded":
        raise SystemExit(f"job {job.id} ended {job.status}: {job.error}")
    write_manifest_csv(client.manifest_rows(job), out)
    print(f"manifest of {job.images_done} images written to {out}", file=sys.stderr)
    return job


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("catalog", type=Path, help="catalog CSV (sku, category, image_url, ...)")
    parser.add_argument("out", type=Path, help="where to write the manifest CSV")
    parser.add_argument("--per-sku", type=int, default=1, help="images per SKU")
    parser.add_argument("--seed", type=int, default=None, help="job seed (same seed = same images)")
    parser.add_argument("--model", default=None, help="model name or name@version (default: production)")
    args = parser.parse_args(argv)
    with Client(
        os.environ.get("CATALOGAN_API_URL", "http://127.0.0.1:8000"), os.environ["CATALOGAN_API_KEY"]
    ) as client:
        run(args.catalog, args.out, client=client, per_sku=args.per_sku, seed=args.seed, model=args.model)
    return 0


if __name__ == "__main__":
    sys.exit(main())
