"""Soak: one long job through a real `catalogan worker`; worker RSS and images/s per window of chunks (issue 11).

    .venv/bin/python bench/bench_soak.py --images 20000 --chunk-size 20 --window-chunks 100

Issue 11's last targets: worker RSS flat over 1,000 chunks; images/s flat from 10k to 200k images. One job of
`--images` images in chunks of `--chunk-size` runs through the real stack — a PostgreSQL database of its own
(created and dropped), a Redis database claimed the way the test suite claims them, a SeaweedFS S3 server
started here, one `catalogan worker` process tree (`--concurrency`, default: the worker's own default) — with
a near-free generator (the `tiny` preset, random weights: the pipeline, not the forward pass, is measured).
A warm-up job (model load) runs first, untimed.

Every `--sample-s` the script reads the job's `chunks_finished` and the RSS of the worker's processes (the
supervisor and its children, summed). Each time another `--window-chunks` chunks have finished it closes a
window: images/s over the window and the RSS at its end. It prints one line per window, then the ratio of
images/s last window / first window, the RSS growth first → last window and the maximum, the load average
before and after, and one JSON line; `soak.json` goes to `--out` (default `bench-results/soak/`).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_pipeline import _create_database, _drop_database, _rss_mib, _worker_pids  # noqa: E402

from db import migrate  # noqa: E402
from db.engine import make_engine, make_session_factory  # noqa: E402
from db.messaging import CeleryPublisher, make_celery_app  # noqa: E402
from db.planning import parse_job_spec, submit_job  # noqa: E402
from db.settings import BrokerSettings, DataSettings  # noqa: E402
from db.storage import open_store  # noqa: E402
from db.tables import Job  # noqa: E402
from models.inference import random_generator_checkpoint  # noqa: E402
from tests.pipeline import CATALOGAN, make_model_version, make_tenant, pipeline_env  # noqa: E402
from tests.services import TEST_BUCKET, SeaweedFS, claimed_redis_db  # noqa: E402


def windows_of(
    samples: list[tuple[float, int, float]], window_chunks: int, chunk_size: int
) -> list[dict[str, float]]:
    """Windows of `window_chunks` finished chunks from (seconds, chunks finished, RSS MiB) samples.

    A window closes at the first sample at or past its chunk count; its rate is the images of the chunks
    finished since the previous window's closing sample over the time between the two samples.
    """
    windows: list[dict[str, float]] = []
    previous = samples[0] if samples else (0.0, 0, 0.0)
    target = window_chunks
    for sample in samples:
        at, chunks, rss = sample
        if chunks >= target and at > previous[0]:
            images = (chunks - previous[1]) * chunk_size
            windows.append(
                {
                    "chunks": chunks,
                    "seconds": round(at, 2),
                    "images_per_s": round(images / (at - previous[0]), 1),
                    "rss_mib": round(rss, 1),
                }
            )
            previous = sample
            target = (chunks // window_chunks + 1) * window_chunks
    return windows


def summary_of(windows: list[dict[str, float]], samples: list[tuple[float, int, float]]) -> dict[str, Any]:
    """Ratios of the last window to the first: images/s, and the RSS growth in MiB."""
    if len(windows) < 2:
        return {"windows": len(windows)}
    first, last = windows[0], windows[-1]
    return {
        "windows": len(windows),
        "images_per_s_last_over_first": round(last["images_per_s"] / first["images_per_s"], 3),
        "rss_first_window_mib": first["rss_mib"],
        "rss_last_window_mib": last["rss_mib"],
        "rss_growth_mib": round(last["rss_mib"] - first["rss_mib"], 1),
        "rss_max_mib": round(max(rss for _, _, rss in samples), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=20000)
    parser.add_argument("--chunk-size", type=int, default=20)
    parser.add_argument("--window-chunks", type=int, default=100)
    parser.add_argument("--sample-s", type=float, default=0.25)
    parser.add_argument(
        "--concurrency", type=int, default=0, help="worker processes [0: the worker's default]"
    )
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--preset", default="tiny", help="architecture preset, random weights")
    parser.add_argument("--timeout-s", type=float, default=3600)
    parser.add_argument(
        "--postgres-admin-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
    )
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379")
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results" / "soak")
    args = parser.parse_args()
    with claimed_redis_db(args.redis_url, f"soak-{os.getpid()}-{uuid.uuid4().hex[:8]}") as (_, redis_url):
        result = run(args, redis_url)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "soak.json").write_text(json.dumps(result, indent=2))
    print(json.dumps({key: value for key, value in result.items() if key != "samples"}))


def run(args: argparse.Namespace, redis_url: str) -> dict[str, Any]:
    load_before = os.getloadavg()
    folder = Path(tempfile.mkdtemp(prefix="catalogan-soak-"))
    seaweed = SeaweedFS(folder / "seaweedfs")
    seaweed.start()
    os.environ.update(seaweed.env())
    db_url = _create_database(args.postgres_admin_url)
    worker: subprocess.Popen[bytes] | None = None
    log = (folder / "worker.log").open("ab")
    try:
        migrate.upgrade(db_url)
        engine = make_engine(db_url)
        factory = make_session_factory(engine)
        store = open_store(f"s3://{TEST_BUCKET}/soak-{uuid.uuid4().hex[:8]}")
        model = make_model_version(
            factory, checkpoint=random_generator_checkpoint(args.preset, seed=0), store=store, name="soak"
        )
        tenant_id = make_tenant(factory)
        publisher = CeleryPublisher(
            make_celery_app(BrokerSettings(broker_url=redis_url), DataSettings(data_dir=folder))
        )
        env = pipeline_env(
            CATALOGAN_DATABASE_URL=db_url,
            CATALOGAN_BROKER_URL=redis_url,
            CATALOGAN_STORAGE_URL=store.url,
            CATALOGAN_DATA_DIR=str(folder / "data"),
            CATALOGAN_BATCH_SIZE=str(args.batch_size),
            CATALOGAN_DEVICE="cpu",
            **seaweed.env(),
        )
        command = [*CATALOGAN, "worker", "--gpus", "none"]
        if args.concurrency:
            command += ["--concurrency", str(args.concurrency)]
        worker = subprocess.Popen(command, env=env, stdout=log, stderr=log)

        def submit(count: int, seed: int) -> str:
            spec = parse_job_spec(
                {
                    "model": "soak",
                    "items": [{"category": "a", "count": count}],
                    "chunk_size": args.chunk_size,
                    "seed": seed,
                }
            )
            return submit_job(
                factory, spec, tenant_id=tenant_id, model_version=model, publisher=publisher
            ).job_id

        def job_state(job_id: str) -> tuple[str, int, int]:
            with factory() as session:
                job = session.get(Job, job_id)
                assert job is not None
                return job.status.value, int(job.chunks_finished), int(job.images_done)

        def wait(job_id: str, on_sample: Any = None) -> None:
            deadline = time.monotonic() + args.timeout_s
            while True:
                status, chunks, _ = job_state(job_id)
                if on_sample is not None:
                    on_sample(chunks)
                if status in ("succeeded", "failed", "cancelled"):
                    if status != "succeeded":
                        raise RuntimeError(f"job {job_id} ended {status}; see {folder / 'worker.log'}")
                    return
                assert worker is not None
                if worker.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"worker exited or timed out; see {folder / 'worker.log'}")
                time.sleep(args.sample_s)

        wait(submit(args.chunk_size * 2, seed=0))  # warm-up: worker start, model load in every process
        samples: list[tuple[float, int, float]] = []
        started = time.perf_counter()
        job_id = submit(args.images, seed=1)
        submitted = time.perf_counter() - started

        def on_sample(chunks: int) -> None:
            assert worker is not None
            rss = sum(_rss_mib(pid) for pid in _worker_pids(worker))
            samples.append((time.perf_counter() - started, chunks, rss))

        wait(job_id, on_sample)
        elapsed = time.perf_counter() - started
        _, chunks, done = job_state(job_id)
        assert done == args.images, (done, args.images)
        processes = len(_worker_pids(worker))
        engine.dispose()
    finally:
        if worker is not None:
            worker.terminate()
            worker.wait(timeout=60)
        log.close()
        _drop_database(args.postgres_admin_url, db_url)
        seaweed.stop()
    windows = windows_of(samples, args.window_chunks, args.chunk_size)
    for window in windows:
        print(
            f"chunks {window['chunks']:>6,}: {window['images_per_s']:>8,.1f} images/s, "
            f"worker RSS {window['rss_mib']:.0f} MiB (t = {window['seconds']:.1f} s)"
        )
    summary = summary_of(windows, samples)
    result = {
        "command": " ".join(sys.argv),
        "images": args.images,
        "chunk_size": args.chunk_size,
        "chunks": chunks,
        "worker_processes": processes,
        "seconds": round(elapsed, 2),
        "submit_seconds": round(submitted, 3),
        "images_per_s": round(args.images / elapsed, 1),
        "load_before": [round(value, 2) for value in load_before],
        "load_after": [round(value, 2) for value in os.getloadavg()],
        **summary,
        "windows_detail": windows,
        "samples": samples,
    }
    print(
        f"{args.images:,} images in {chunks:,} chunks of {args.chunk_size}, {processes} worker processes: "
        f"{result['images_per_s']:,.1f} images/s overall; images/s last/first window "
        f"{summary.get('images_per_s_last_over_first')}; worker RSS {summary.get('rss_first_window_mib')} → "
        f"{summary.get('rss_last_window_mib')} MiB (growth {summary.get('rss_growth_mib')}, max "
        f"{summary.get('rss_max_mib')}); load {result['load_before']} → {result['load_after']}"
    )
    return result


if __name__ == "__main__":
    main()
