"""End-to-end generation throughput against the floor measured in the same run.

    .venv/bin/python bench/bench_pipeline.py --images 10000,50000 --chunk-size 256

What it runs, in order, on real services (PostgreSQL, Redis, and a SeaweedFS S3 server it starts itself):

1. planning: a 1,000,000-image job planned (one transaction) on SQLite and on PostgreSQL, and the time to
   publish its chunk ids to Redis;
2. the floor: generator forward + PNG encode + S3 PUT in this process, with the worker's batch size and
   upload-thread count and the same overlap (batch k uploads while batch k+1 runs), no queue and no SQL —
   measured before the first job and after every job, so each job is compared with the floors around it;
3. end to end: for each size, a job submitted over HTTP (`POST /v1/jobs` through the SDK to the real API,
   served by uvicorn in this process; `--submit direct` calls `db.planning.submit_job` instead) to one real
   `catalogan worker` process (Celery over Redis, rows in PostgreSQL, objects in SeaweedFS), timed from submit
   until `GET /v1/jobs/{id}` says `succeeded`, with the worker's RSS sampled every second and the CPU seconds
   of every part of the stack counted;
4. memory (`--memory-chunks N`): one job of N small chunks, the worker's RSS sampled every second.

Writes `report.md` and `pipeline.png` to `--out` (default `bench-results/pipeline/`).

It prints images/s for each, the ratio end-to-end / floor, and the ratio of CPU per image (floor / end to end),
which the machine's load cannot distort. The generator is the fashion-cgan
architecture with random weights (throughput does not depend on the weights).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))  # bench_upload, ray_data_peer

import torch  # noqa: E402
from sqlalchemy import make_url, text  # noqa: E402

from db import migrate  # noqa: E402
from db.engine import make_engine, make_session_factory, transaction  # noqa: E402
from db.images import image_key  # noqa: E402
from db.messaging import CeleryPublisher, make_celery_app  # noqa: E402
from db.planning import parse_job_spec, plan_job, publish_planned, submit_job  # noqa: E402
from db.settings import BrokerSettings, DataSettings  # noqa: E402
from db.storage import ObjectStore, open_store  # noqa: E402
from models.inference import load_generator, random_generator_checkpoint  # noqa: E402
from models.sampling import latents_for  # noqa: E402
from scheduler.client import Client  # noqa: E402
from tests.faults.load import create_database, drop_database, load_tenant_headers, serve_api  # noqa: E402
from tests.pipeline import CATALOGAN, job_row, make_model_version, make_tenant, pipeline_env  # noqa: E402
from tests.services import TEST_BUCKET, SeaweedFS, claimed_redis_db  # noqa: E402
from workers.encoding import Provenance, encode_with_digest  # noqa: E402


def bench_planning(db_url: str, redis_url: str, images: int, folder: Path) -> dict[str, float]:
    """Seconds to plan a job of `images` on SQLite and PostgreSQL, and to publish its chunks to Redis."""
    results: dict[str, float] = {}
    spec = parse_job_spec({"model": "bench", "items": [{"category": "a", "count": images}], "seed": 1})
    for name, url in (("sqlite", f"sqlite:///{folder / 'plan.db'}"), ("postgresql", db_url)):
        migrate.upgrade(url)
        engine = make_engine(url)
        factory = make_session_factory(engine)
        tenant_id = make_tenant(factory)
        model_version = make_model_version(factory, name="plan-bench", categories=("a",))
        warm_up = parse_job_spec({"model": "bench", "items": [{"category": "a", "count": 1000}], "seed": 1})
        with transaction(factory) as session:  # connect and compile the statements first
            plan_job(session, warm_up, tenant_id=tenant_id, model_version=model_version)
        started = time.perf_counter()
        with transaction(factory) as session:
            planned = plan_job(session, spec, tenant_id=tenant_id, model_version=model_version)
        results[f"plan_{name}_s"] = time.perf_counter() - started
        if name == "postgresql":
            app = make_celery_app(BrokerSettings(broker_url=redis_url), DataSettings(data_dir=folder))
            started = time.perf_counter()
            publish_planned(factory, planned, CeleryPublisher(app))
            results["publish_redis_s"] = time.perf_counter() - started
            results["chunks"] = len(planned.chunk_ids)
            with app.connection_for_write() as connection:  # leave the queue empty for the next steps
                connection.default_channel.queue_purge("bulk")
        engine.dispose()
    return results


def bench_floor(
    checkpoint: bytes, store: ObjectStore, images: int, batch_size: int, threads: int, meter: CpuMeter
) -> dict[str, Any]:
    """Images/s (and CPU per image) of forward + encode + S3 PUT with the worker's overlap, no queue, no SQL."""
    generator = load_generator(checkpoint, device="cpu")
    pool = ThreadPoolExecutor(max_workers=threads)
    seed, job_id = 1, uuid.uuid4().hex

    def encode_and_put(index: int, pixels: Any) -> None:
        provenance = Provenance("bench@1", generator.checkpoint_sha256, job_id, index, seed, "a", None)
        encoded = encode_with_digest(pixels, "png", provenance)
        store.put(image_key("floor", job_id, "a", index, "png"), encoded.data, content_type="image/png")

    def run(count: int) -> None:
        in_flight: list[Future[None]] = []
        for start in range(0, count, batch_size):
            indices = list(range(start, min(start + batch_size, count)))
            latents = latents_for(seed, indices, generator.z_dim)
            classes = torch.zeros(len(indices), dtype=torch.long)
            pixels = generator.generate(classes, latents).numpy()
            futures = [pool.submit(encode_and_put, index, pixels[row]) for row, index in enumerate(indices)]
            for future in in_flight:
                future.result()
            in_flight = futures
        for future in in_flight:
            future.result()

    run(min(images, batch_size * 2))  # warm-up: allocator, boto3 connections
    meter.start()
    started = time.perf_counter()
    run(images)
    elapsed = time.perf_counter() - started
    cpu = meter.stop()
    pool.shutdown()
    return {"images_per_s": images / elapsed, "cpu_ms_per_image": _per_image_ms(cpu, images), "cpu": cpu}


def _per_image_ms(cpu: dict[str, float], images: int) -> float:
    return 1000 * sum(cpu.values()) / images


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads) so far; 0 once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


@dataclass
class CpuMeter:
    """CPU seconds spent by each part of the stack between `start()` and `stop()`.

    Parts: this process (the floor's work, or submitting and polling), the worker, SeaweedFS, the
    PostgreSQL backends serving the benchmark database, and the Redis server (shared with anything else
    using it). CPU per image is what the machine's load cannot distort: the ratio of CPU per image, floor
    vs end to end, says what the pipeline costs on top of the floor's work even on a busy box.
    """

    pids: Callable[[], dict[str, list[int]]]
    begin: dict[str, float] = field(default_factory=dict)
    spent: dict[str, float] = field(default_factory=dict)

    def _read(self) -> dict[str, float]:
        totals = {name: sum(_cpu_seconds(pid) for pid in pids) for name, pids in self.pids().items()}
        totals["bench"] = time.process_time()
        return totals

    def start(self) -> None:
        self.begin = self._read()

    def stop(self) -> dict[str, float]:
        end = self._read()
        self.spent = {name: max(0.0, end[name] - self.begin.get(name, 0.0)) for name in end}
        return self.spent


def run_line(run: dict[str, Any]) -> str:
    """One job's figures on one line."""
    return (
        f"end to end {run['images']:>8,} images ({run['chunks']:.0f} chunks): {run['images_per_s']:.0f} images/s; "
        f"floor {run['floor_before']:.0f} before / {run['floor_after']:.0f} after -> {run['ratio']:.2f} x floor; "
        f"CPU {run['cpu_ms_per_image']:.2f} ms/image vs floor {run['floor_cpu_ms_per_image']:.2f} "
        f"-> {run['cpu_ratio']:.2f}; "
        f"worker RSS by quarter {' / '.join(f'{value:.0f}' for value in run['rss_quartiles_mib'])} MiB"
    )


def _quartiles(samples: list[float]) -> list[float]:
    return [samples[min(len(samples) - 1, (len(samples) - 1) * q // 4)] for q in range(5)]


def bench_end_to_end(
    env: dict[str, str],
    factory: Any,
    store: ObjectStore,
    checkpoint: bytes,
    sizes: list[int],
    chunk_size: int,
    folder: Path,
    redis_url: str,
    measure_floor: Callable[[CpuMeter], dict[str, Any]],
    stack_pids: Callable[[], dict[str, list[int]]],
    memory_chunks: int,
    memory_chunk_size: int,
    api_url: str | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """One worker process; for each size a job from submit to succeeded; worker RSS sampled every second.

    The floor is measured again right after each job (the worker idles meanwhile), so every run is compared
    with floors taken just before and just after it on the same, possibly busy, machine. Then, with
    `memory_chunks`, one job of that many small chunks, for the worker's RSS over many chunks.
    """
    app = make_celery_app(BrokerSettings(broker_url=redis_url), DataSettings(data_dir=folder))
    publisher = CeleryPublisher(app)
    client: Client | None = None
    if api_url is not None:
        tenant_id, headers = load_tenant_headers(factory, "bench")
        client = Client(api_url, headers["Authorization"].removeprefix("Bearer "))
    else:
        tenant_id = make_tenant(factory)
    model_version = make_model_version(
        factory,
        checkpoint=checkpoint,
        store=store,
        name="bench",
        categories=("a", "b", "c", "d", "e", "f", "g", "h", "i", "j"),
    )
    floor_meter = CpuMeter(lambda: {"seaweedfs": stack_pids()["seaweedfs"]})
    # Before the worker starts: its start-up (importing torch) would slow the floor.
    floors = [measure_floor(floor_meter)]
    log = (folder / "worker.log").open("ab")
    # One worker process: the floor is one process too (the peer comparison runs the worker's default).
    worker = subprocess.Popen(
        [*CATALOGAN, "worker", "--gpus", "none", "--concurrency", "1"], env=env, stdout=log, stderr=log
    )
    rss: list[tuple[float, float]] = []  # (seconds since start, MiB)
    stop = threading.Event()
    t0 = time.perf_counter()

    def sample() -> None:
        while not stop.wait(1.0) and worker.poll() is None:
            rss.append((time.perf_counter() - t0, _rss_mib(worker.pid)))

    threading.Thread(target=sample, daemon=True).start()
    job_meter = CpuMeter(lambda: {**stack_pids(), "worker": [worker.pid]})

    def run_job(count: int, seed: int, size: int, meter: CpuMeter | None = None) -> float:
        items = [{"category": "a", "count": count // 2}, {"category": "b", "count": count - count // 2}]
        if meter is not None:
            meter.start()
        started = time.perf_counter()
        if client is not None:
            job_id = client.submit_job(items, model="bench", seed=seed, chunk_size=size).id

            def finished() -> bool:
                assert client is not None
                return client.get_job(job_id).is_terminal

        else:
            spec = parse_job_spec({"model": "bench", "items": items, "chunk_size": size, "seed": seed})
            job_id = submit_job(
                factory, spec, tenant_id=tenant_id, model_version=model_version, publisher=publisher
            ).job_id

            def finished() -> bool:
                return job_row(factory, job_id).status.is_terminal

        while not finished():
            if worker.poll() is not None:
                raise RuntimeError(f"worker exited with {worker.returncode}; see {folder / 'worker.log'}")
            time.sleep(0.5)
        elapsed = time.perf_counter() - started
        if meter is not None:
            meter.stop()
        job = job_row(factory, job_id)
        assert job.status.value == "succeeded" and job.images_done == count, (job.status, job.images_done)
        return count / elapsed

    results: list[dict[str, Any]] = []
    memory: dict[str, Any] | None = None
    try:
        run_job(chunk_size, seed=0, size=chunk_size)  # warm-up: worker start, model load
        for size in sizes:
            before = len(rss)
            rate = run_job(size, seed=size, size=chunk_size, meter=job_meter)
            cpu = dict(job_meter.spent)
            samples = [mib for _, mib in rss[before:]] or [_rss_mib(worker.pid)]
            floors.append(measure_floor(floor_meter))
            floor_rate = (floors[-2]["images_per_s"] + floors[-1]["images_per_s"]) / 2
            floor_cpu = (floors[-2]["cpu_ms_per_image"] + floors[-1]["cpu_ms_per_image"]) / 2
            results.append(
                {
                    "images": size,
                    "images_per_s": rate,
                    "floor_before": floors[-2]["images_per_s"],
                    "floor_after": floors[-1]["images_per_s"],
                    "ratio": rate / floor_rate,
                    "cpu_ms_per_image": _per_image_ms(cpu, size),
                    "floor_cpu_ms_per_image": floor_cpu,
                    "cpu_ratio": floor_cpu / _per_image_ms(cpu, size),
                    "cpu_seconds": cpu,
                    "floor_cpu_seconds": floors[-1]["cpu"],
                    "chunks": -(-size // chunk_size),
                    "rss_first_mib": samples[0],
                    "rss_last_mib": samples[-1],
                    "rss_max_mib": max(samples),
                    "rss_quartiles_mib": _quartiles(samples),
                }
            )
            print(f"(as it finishes) {run_line(results[-1])}", flush=True)
        if memory_chunks:
            before = len(rss)
            started = time.perf_counter() - t0
            count = memory_chunks * memory_chunk_size
            rate = run_job(count, seed=7, size=memory_chunk_size)
            series = [(at - started, mib) for at, mib in rss[before:]]
            memory = {
                "chunks": memory_chunks,
                "chunk_size": memory_chunk_size,
                "images": count,
                "images_per_s": rate,
                "rss_series": series,
                "rss_quartiles_mib": _quartiles([mib for _, mib in series] or [_rss_mib(worker.pid)]),
            }
    finally:
        stop.set()
        worker.terminate()
        worker.wait(timeout=60)
        log.close()
        if client is not None:
            client.close()
    return results, memory


@dataclass
class PeerScenario:
    """One row of the comparison: a model version for catalogan, the same checkpoint for the peer."""

    name: str
    model_version: Any
    checkpoint: bytes
    categories: tuple[str, str]
    output_format: str = "png"


def _epoch(moment: dt.datetime) -> float:
    """Seconds since the epoch of a SQL timestamp (naive ones are UTC, as the tables store them)."""
    return (moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)).timestamp()


def _worker_pids(worker: subprocess.Popen[bytes]) -> list[int]:
    """The supervisor and its children (the processes that do the work with --concurrency > 1)."""
    children = Path(f"/proc/{worker.pid}/task/{worker.pid}/children")
    try:
        return [worker.pid, *(int(pid) for pid in children.read_text().split())]
    except OSError:
        return [worker.pid]


def bench_versus_peer(
    args: argparse.Namespace,
    env: dict[str, str],
    factory: Any,
    store: ObjectStore,
    folder: Path,
    redis_url: str,
    stack_pids: Callable[[], dict[str, list[int]]],
) -> dict[str, Any]:
    """catalogan (`catalogan worker`, default --concurrency) vs the Ray Data peer, and the S3 PUT ceiling.

    Every figure comes from this one invocation, against the one SeaweedFS: (a) the shipped generator with
    its gate as shipped, (b) a near-free generator (tiny preset, random weights), (c) output_format tar with
    that generator against the peer's one object per image; the PUT ceiling with boto3's thread pool and
    with obstore (the client catalogan ships), 2,600-byte objects. catalogan's rate is the job's span in SQL
    (created_at → finished_at), as a user reading the job would compute it; the peer's is its dataset's
    execution, actors' start-up and model load included (Ray's own start-up excluded).
    """
    import ray
    from bench_upload import run_client
    from ray_data_peer import init_ray, run_peer

    from models.default_model import ensure_default_model, shipped_checkpoint_bytes
    from tests.services import TEST_BUCKET as BUCKET
    from workers.cli import cpu_split

    app = make_celery_app(BrokerSettings(broker_url=redis_url), DataSettings(data_dir=folder))
    publisher = CeleryPublisher(app)
    tenant_id = make_tenant(factory)
    cores = len(os.sched_getaffinity(0))
    results: dict[str, Any] = {"cores": cores, "load_before": os.getloadavg()}

    # The S3 PUT ceiling of this server, each client in a process of its own, 8 requests in flight.
    ceiling_args = argparse.Namespace(
        count=args.ceiling_puts,
        size=2600,
        threads=8,
        burn=0,
        bucket=BUCKET,
        extra_path=None,
        aiobotocore_path=None,
    )
    endpoint = os.environ["AWS_ENDPOINT_URL"]
    seaweed_pid = stack_pids()["seaweedfs"][0]
    # From one process, and from as many processes as the worker runs (8 in flight in each, as in the worker).
    worker_processes = args.worker_concurrency or cpu_split(None, cores)[0]  # the worker's own default
    results["worker_processes"] = worker_processes
    results["ceiling"] = {
        f"{name} x{processes}": run_client(
            name, ceiling_args, endpoint, dict(os.environ), seaweed_pid, processes=processes
        )
        for name in ("boto3-threads", "obstore")
        for processes in sorted({1, worker_processes})
    }
    print(f"S3 PUT ceiling: {json.dumps(results['ceiling'])}", flush=True)

    scenarios: list[PeerScenario] = []
    if not args.skip_shipped:
        shipped = ensure_default_model(factory, store, notify=lambda line: print(line, flush=True))
        categories = tuple(shipped.categories[:2])
        scenarios.append(PeerScenario("shipped", shipped, shipped_checkpoint_bytes()[0], categories))
    tiny_checkpoint = random_generator_checkpoint("tiny", seed=0)
    tiny = make_model_version(
        factory, checkpoint=tiny_checkpoint, store=store, name="bench-tiny", categories=("a", "b", "c")
    )
    scenarios.append(PeerScenario("near-free", tiny, tiny_checkpoint, ("a", "b")))
    scenarios.append(PeerScenario("tar", tiny, tiny_checkpoint, ("a", "b"), output_format="tar"))

    worker_env = dict(env)
    if args.worker_backend:
        worker_env["CATALOGAN_INFERENCE_BACKEND"] = args.worker_backend
    if args.worker_concurrency:
        worker_env["CATALOGAN_WORKER_CONCURRENCY"] = str(args.worker_concurrency)
    else:
        worker_env.pop("CATALOGAN_WORKER_CONCURRENCY", None)
    log = (folder / "worker-peer.log").open("ab")

    def start_worker(extra: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [*CATALOGAN, "worker", "--gpus", "none"],
            env={**worker_env, **(extra or {})},
            stdout=log,
            stderr=log,
        )

    worker = start_worker()

    # CPU seconds of every part of the stack, the worker's processes included: what a box whose S3 server
    # shares its cores allows (the PUT ceiling above is CPU-bound there too).
    meter = CpuMeter(lambda: {**stack_pids(), "worker": _worker_pids(worker)})

    def run_job(scenario: PeerScenario, count: int, seed: int) -> float:
        first, second = scenario.categories
        items = [{"category": first, "count": count // 2}, {"category": second, "count": count - count // 2}]
        spec = parse_job_spec(
            {
                "model": scenario.model_version.name,
                "items": items,
                "chunk_size": args.chunk_size if scenario.output_format == "png" else args.shard_size,
                "seed": seed,
                "output_format": scenario.output_format,
            }
        )
        job_id = submit_job(
            factory, spec, tenant_id=tenant_id, model_version=scenario.model_version, publisher=publisher
        ).job_id
        while not job_row(factory, job_id).status.is_terminal:
            if worker.poll() is not None:
                raise RuntimeError(
                    f"worker exited with {worker.returncode}; see {folder / 'worker-peer.log'}"
                )
            time.sleep(0.2)
        job = job_row(factory, job_id)
        assert job.status.value == "succeeded", (job.status, job.error)
        assert job.finished_at is not None
        return count / (job.finished_at - job.created_at).total_seconds()

    def run_generate(scenario: PeerScenario, count: int, seed: int) -> dict[str, Any]:
        """`catalogan generate --no-worker` on the same stack and worker: the job with its streaming export."""
        first, second = scenario.categories
        out = folder / f"export-{scenario.name}-{seed}"
        model = f"{scenario.model_version.name}@{scenario.model_version.version}"
        command = [*CATALOGAN, "generate", "--no-worker", "--json", "--model", model, "--seed", str(seed)]
        command += ["--category", f"{first}={count // 2}", "--category", f"{second}={count - count // 2}"]
        command += ["--chunk-size", str(args.chunk_size), "--out", str(out)]
        started = time.time()
        done = subprocess.run(command, env=worker_env, capture_output=True, text=True, timeout=3600)
        ended = time.time()
        if done.returncode != 0:
            raise RuntimeError(f"catalogan generate exited {done.returncode}: {done.stderr[-2000:]}")
        summary = json.loads(done.stdout.strip().splitlines()[-1])
        files = sum(1 for _ in out.rglob("*.png")) - len(summary["contact_sheets"])
        assert summary["exported_images"] == count == files, (summary["exported_images"], files)
        job = job_row(factory, summary["job_id"])
        assert job.finished_at is not None
        created, finished = _epoch(job.created_at), _epoch(job.finished_at)
        return {
            "scenario": scenario.name,
            "images": count,
            "job_images_per_s": count / (finished - created),
            # From the submit (the job row's created_at) until every file is on disk and the command exited.
            "with_export_images_per_s": count / (ended - created),
            "command_images_per_s": count / (ended - started),
        }

    rows: list[dict[str, Any]] = []
    exports: list[dict[str, Any]] = []
    scaling: list[dict[str, Any]] = []
    setting_ab: list[dict[str, Any]] = []
    peer_rates: dict[bytes, dict[str, Any]] = {}
    try:
        for scenario in scenarios:  # warm-up: every worker process loads every model (not timed)
            run_job(scenario, 2 * cores * args.chunk_size, seed=0)
        init_ray(cores)
        for scenario in scenarios:
            meter.start()
            rate = run_job(scenario, args.peer_images, seed=1)
            cpu_ms = {name: 1000 * seconds / args.peer_images for name, seconds in meter.stop().items()}
            print(
                f"catalogan {scenario.name}: {rate:.0f} images/s; CPU ms per image "
                + ", ".join(f"{name} {value:.3f}" for name, value in cpu_ms.items()),
                flush=True,
            )
            if scenario.checkpoint not in peer_rates:
                peer = run_peer(
                    scenario.checkpoint,
                    args.peer_images,
                    bucket=BUCKET,
                    prefix=f"peer-{scenario.name}-{uuid.uuid4().hex[:6]}",
                    concurrency=cores,
                )
                peer_rates[scenario.checkpoint] = peer
                print(
                    f"peer {scenario.name}: {peer['images_per_s']:.0f} images/s "
                    f"({peer['steady_images_per_s']:.0f} after its first batch)",
                    flush=True,
                )
            peer = peer_rates[scenario.checkpoint]
            rows.append(
                {
                    "scenario": scenario.name,
                    "images": args.peer_images,
                    "catalogan_images_per_s": rate,
                    "peer_images_per_s": peer["images_per_s"],
                    "peer_steady_images_per_s": peer["steady_images_per_s"],
                    "ratio": rate / peer["images_per_s"],
                    "ratio_steady": rate / peer["steady_images_per_s"],
                    "cpu_ms_per_image": cpu_ms,
                }
            )
        ray.shutdown()  # the peer is done: its actors' memory and threads go back before the next rows
        job_only = {row["scenario"]: row["catalogan_images_per_s"] for row in rows}
        if args.export:
            for scenario in scenarios:
                if scenario.output_format != "png":
                    continue
                export = run_generate(scenario, args.peer_images, seed=7)
                export["ratio_to_job_only"] = export["with_export_images_per_s"] / job_only[scenario.name]
                print(
                    f"catalogan generate {scenario.name}: {export['with_export_images_per_s']:.0f} images/s "
                    f"submit → exported ({export['job_images_per_s']:.0f} job span), "
                    f"{export['ratio_to_job_only']:.2f} of the job-only rate",
                    flush=True,
                )
                exports.append(export)
        near_free = next(scenario for scenario in scenarios if scenario.name == "near-free")
        for seed, size in enumerate(int(size) for size in args.scale_images.split(",") if size):
            rate = run_job(near_free, size, seed=100 + seed)
            print(f"catalogan near-free at {size:,} images: {rate:.0f} images/s", flush=True)
            scaling.append({"images": size, "catalogan_images_per_s": rate})
        variable, values = ab_setting(args.ab)
        for round_ in range(args.ab_rounds):  # the shipped job, the worker restarted per value
            shipped_scenario = next(scenario for scenario in scenarios if scenario.name == "shipped")
            for value in values:
                worker.terminate()
                worker.wait(timeout=60)
                worker = start_worker({variable: value})
                run_job(shipped_scenario, 2 * cores * args.chunk_size, seed=0)  # warm-up: model, evaluator
                rate = run_job(shipped_scenario, args.peer_images, seed=200 + round_)
                print(f"catalogan shipped, {variable}={value}: {rate:.0f} images/s", flush=True)
                setting_ab.append(
                    {"round": round_, "variable": variable, "value": value, "catalogan_images_per_s": rate}
                )
    finally:
        ray.shutdown()
        worker.terminate()
        worker.wait(timeout=60)
        log.close()
    results["rows"] = rows
    results["exports"] = exports
    results["scaling"] = scaling
    results["setting_ab"] = setting_ab
    results["load_after"] = os.getloadavg()
    return results


def peer_lines(results: dict[str, Any]) -> list[str]:
    """The comparison as a Markdown table, the PUT ceiling and the load of the box."""
    ceiling = results["ceiling"]
    lines = [
        f"catalogan vs the Ray Data peer, one invocation, {results['cores']} cores; load average before "
        f"{' / '.join(f'{x:.1f}' for x in results['load_before'])}, after "
        f"{' / '.join(f'{x:.1f}' for x in results['load_after'])}",
        "",
        "| scenario | images | catalogan images/s | peer images/s (after its first batch) | catalogan / peer "
        "(/ peer after its first batch) |",
        "|---|---:|---:|---:|---:|",
    ]
    for row in results["rows"]:
        lines.append(
            f"| {row['scenario']} | {row['images']:,} | {row['catalogan_images_per_s']:.0f} | "
            f"{row['peer_images_per_s']:.0f} ({row['peer_steady_images_per_s']:.0f}) | "
            f"{row['ratio']:.2f} ({row['ratio_steady']:.2f}) |"
        )
    lines.append("")
    for name, figures in ceiling.items():
        if "error" in figures:
            lines.append(f"S3 PUT ceiling, {name}: not measured ({figures['error']})")
            continue
        lines.append(
            f"S3 PUT ceiling, {name}: {figures['puts_per_s']:.0f} PUTs/s, "
            f"{figures['client_cpu_ms_per_put']:.2f} ms client CPU per PUT"
        )
    lines.append("")
    for row in results["rows"]:
        if "cpu_ms_per_image" in row:
            parts = row["cpu_ms_per_image"]
            lines.append(
                f"catalogan {row['scenario']}: CPU ms per image {sum(parts.values()):.3f} = "
                + " + ".join(f"{name} {value:.3f}" for name, value in parts.items())
            )
    near_free = next((row for row in results["rows"] if row["scenario"] == "near-free"), None)
    for name, figures in ceiling.items():
        if near_free and name.startswith("obstore") and "puts_per_s" in figures:
            lines.append(
                f"near-free catalogan / obstore PUT ceiling ({name.split()[-1]} process(es), as many as "
                f"{'the worker' if figures['processes'] == results['worker_processes'] else 'one'}): "
                f"{near_free['catalogan_images_per_s'] / figures['puts_per_s']:.2f}"
            )
            if "cpu_ms_per_image" in near_free:
                # Client + server CPU per PUT against catalogan's whole stack per image: on a box where the S3
                # server shares the cores and both runs use them all, the ratio of the two rates is this.
                put_cpu = figures["client_cpu_ms_per_put"] + figures["server_cpu_ms_per_put"]
                lines.append(
                    f"  CPU per PUT of that ceiling (client + server) {put_cpu:.3f} ms / catalogan near-free CPU "
                    f"per image {sum(near_free['cpu_ms_per_image'].values()):.3f} ms = "
                    f"{put_cpu / sum(near_free['cpu_ms_per_image'].values()):.2f}: the ratio of the rates "
                    "when both are bound by the same cores"
                )
    if results["exports"]:
        lines += [
            "",
            "| `catalogan generate` (same worker, streaming export) | images | job span images/s | submit → "
            "every file on disk images/s | / job-only rate (row above, no export) |",
            "|---|---:|---:|---:|---:|",
        ]
        for export in results["exports"]:
            lines.append(
                f"| {export['scenario']} | {export['images']:,} | {export['job_images_per_s']:.0f} | "
                f"{export['with_export_images_per_s']:.0f} | {export['ratio_to_job_only']:.2f} |"
            )
    if results["scaling"]:
        lines += ["", "| near-free job size | catalogan images/s |", "|---:|---:|"]
        lines += [
            f"| {row['images']:,} | {row['catalogan_images_per_s']:.0f} |" for row in results["scaling"]
        ]
        rates = [row["catalogan_images_per_s"] for row in results["scaling"]]
        lines.append(f"\nlargest job / smallest job images/s: {rates[-1] / rates[0]:.2f}")
    if results.get("setting_ab"):
        ab = results["setting_ab"]
        variable = ab[0]["variable"]
        lines += ["", f"| round | {variable} | shipped images/s |", "|---:|---|---:|"]
        lines += [f"| {row['round']} | {row['value']} | {row['catalogan_images_per_s']:.0f} |" for row in ab]
        by_value: dict[str, list[float]] = {}
        for row in ab:
            by_value.setdefault(row["value"], []).append(row["catalogan_images_per_s"])
        first, second = list(by_value)
        lines.append(
            f"\n{variable} {second} ÷ {first} (mean of {len(by_value[second])} rounds): "
            f"{sum(by_value[second]) / sum(by_value[first]):.3f}"
        )
    return lines


def ab_setting(text: str) -> tuple[str, tuple[str, str]]:
    """`VAR=A,B` → (VAR, (A, B)); SystemExit naming --ab when malformed."""
    variable, _, values = text.partition("=")
    pair = tuple(value.strip() for value in values.split(","))
    if not variable.startswith("CATALOGAN_") or len(pair) != 2 or not all(pair):
        raise SystemExit(f"--ab {text!r}: must be CATALOGAN_NAME=A,B (two values of one worker setting)")
    return variable, (pair[0], pair[1])


def _postgres_backends(admin_url: str, database: str) -> list[int]:
    engine = make_engine(admin_url)
    with engine.connect() as connection:
        pids = connection.execute(
            text("SELECT pid FROM pg_stat_activity WHERE datname = :name"), {"name": database}
        ).scalars()
        result = list(pids)
    engine.dispose()
    return result


def _redis_server_pid(url: str) -> list[int]:
    import redis

    client = redis.Redis.from_url(url)
    pid = int(client.info("server")["process_id"])
    client.close()
    return [pid]


def write_report(
    out: Path,
    args: argparse.Namespace,
    planning: dict[str, float],
    runs: list[dict[str, Any]],
    memory: dict[str, Any] | None,
) -> None:
    """report.md (the figures as tables) and pipeline.png (images/s per size, RSS over the memory job)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    lines = [
        "# Generation pipeline vs its floor",
        "",
        f"`{' '.join(sys.argv)}` — torch threads {torch.get_num_threads()}, batch {args.batch_size}, "
        f"{args.upload_threads} upload threads, chunk {args.chunk_size}, preset {args.preset}, "
        f"submitted {'over HTTP' if args.submit == 'http' else 'directly'}.",
        "",
        f"Planning {args.plan_images:,} images ({planning['chunks']:.0f} chunks): SQLite "
        f"{planning['plan_sqlite_s'] * 1000:.0f} ms, PostgreSQL {planning['plan_postgresql_s'] * 1000:.0f} ms; "
        f"publishing to Redis {planning['publish_redis_s'] * 1000:.0f} ms.",
        "",
        "| images | chunks | end to end images/s | floor before / after | ratio | CPU ms/image e2e / floor | "
        "CPU ratio | worker RSS first → last (max) MiB |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for run in runs:
        lines.append(
            f"| {run['images']:,} | {run['chunks']} | {run['images_per_s']:.1f} | "
            f"{run['floor_before']:.1f} / {run['floor_after']:.1f} | {run['ratio']:.2f} | "
            f"{run['cpu_ms_per_image']:.2f} / {run['floor_cpu_ms_per_image']:.2f} | {run['cpu_ratio']:.2f} | "
            f"{run['rss_first_mib']:.0f} → {run['rss_last_mib']:.0f} ({run['rss_max_mib']:.0f}) |"
        )
    if runs:
        lines += ["", "CPU seconds by part, last job (end to end) and last floor:", ""]
        lines += ["| part | end to end | floor |", "|---|---:|---:|"]
        last = runs[-1]
        for part in sorted(set(last["cpu_seconds"]) | set(last["floor_cpu_seconds"])):
            lines.append(
                f"| {part} | {last['cpu_seconds'].get(part, 0):.1f} | {last['floor_cpu_seconds'].get(part, 0):.1f} |"
            )
    if memory:
        lines += [
            "",
            f"Memory job: {memory['chunks']:,} chunks of {memory['chunk_size']} ({memory['images']:,} images, "
            f"{memory['images_per_s']:.1f} images/s); worker RSS by quarter of the job: "
            + " / ".join(f"{value:.0f}" for value in memory["rss_quartiles_mib"])
            + " MiB.",
        ]
    (out / "report.md").write_text("\n".join(lines) + "\n")

    figure, axes = plt.subplots(1, 2, figsize=(11, 4))
    if runs:
        sizes = [f"{run['images']:,}" for run in runs]
        positions = range(len(runs))
        axes[0].bar([x - 0.2 for x in positions], [r["images_per_s"] for r in runs], 0.4, label="end to end")
        axes[0].bar(
            [x + 0.2 for x in positions],
            [(r["floor_before"] + r["floor_after"]) / 2 for r in runs],
            0.4,
            label="floor (mean of before/after)",
        )
        for x, run in zip(positions, runs, strict=True):
            axes[0].annotate(f"{run['ratio']:.2f}x", (x, run["images_per_s"]), ha="center", va="bottom")
        axes[0].set_xticks(list(positions), sizes)
        axes[0].set_xlabel("images per job")
        axes[0].set_ylabel("images/s")
        axes[0].set_title("Throughput vs floor")
        axes[0].legend(loc="lower right")
    if memory and memory["rss_series"]:
        axes[1].plot([t for t, _ in memory["rss_series"]], [m for _, m in memory["rss_series"]])
        axes[1].set_xlabel(f"seconds into the {memory['chunks']:,}-chunk job")
        axes[1].set_ylabel("worker RSS (MiB)")
        axes[1].set_ylim(bottom=0)
        axes[1].set_title("Worker memory")
    figure.tight_layout()
    figure.savefig(out / "pipeline.png", dpi=100)
    plt.close(figure)


def main() -> None:
    """Parse the flags, run the measurements, print a table and a JSON line, write the report."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--images", default="10000", help="Comma-separated job sizes, e.g. 10000,50000,200000."
    )
    parser.add_argument("--floor-images", type=int, default=5000, help="Images for the floor measurement.")
    parser.add_argument("--plan-images", type=int, default=1_000_000, help="Size of the planning benchmark.")
    parser.add_argument("--chunk-size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--upload-threads", type=int, default=8)
    parser.add_argument(
        "--memory-chunks",
        type=int,
        default=0,
        help="Also run one job of this many chunks (e.g. 1000) for RSS.",
    )
    parser.add_argument(
        "--memory-chunk-size", type=int, default=16, help="Images per chunk of the memory job."
    )
    parser.add_argument("--preset", default="fashion-cgan", help="Architecture preset (random weights).")
    parser.add_argument(
        "--postgres-admin-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
    )
    parser.add_argument(
        "--redis-url",
        default="redis://127.0.0.1:6379",
        help="Redis server; the benchmark claims a free database 1..15 the way the test suite does.",
    )
    parser.add_argument(
        "--submit",
        choices=["http", "direct"],
        default="http",
        help="http: POST /v1/jobs to the API served here (uvicorn on loopback), poll GET /v1/jobs/{id}; "
        "direct: db.planning.submit_job, poll the row.",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=ROOT / "bench-results" / "pipeline",
        help="Folder for report.md and pipeline.png.",
    )
    parser.add_argument(
        "--mode",
        choices=["peer", "floor", "both"],
        default="peer",
        help="peer: catalogan vs the Ray Data peer and the S3 PUT ceiling (issue 11); floor: the planning, "
        "floor and end-to-end runs above; both.",
    )
    parser.add_argument(
        "--peer-images", type=int, default=10000, help="Images per job in the peer comparison."
    )
    parser.add_argument("--shard-size", type=int, default=1000, help="Images per tar shard (= chunk).")
    parser.add_argument("--ceiling-puts", type=int, default=4000, help="PUTs per client for the S3 ceiling.")
    parser.add_argument(
        "--worker-concurrency",
        type=int,
        default=0,
        help="catalogan worker processes in the peer comparison [default 0: the worker's own default].",
    )
    parser.add_argument(
        "--worker-backend",
        default="",
        help="CATALOGAN_INFERENCE_BACKEND of the catalogan worker [default: unset, the worker's own default].",
    )
    parser.add_argument(
        "--no-export",
        dest="export",
        action="store_false",
        help="No `catalogan generate` rows (the job with its streaming export against the job-only rate).",
    )
    parser.add_argument(
        "--scale-images",
        default="",
        help="Comma-separated near-free job sizes run after the comparison, e.g. 10000,200000 (images/s "
        "against job size).",
    )
    parser.add_argument(
        "--ab-rounds",
        type=int,
        default=0,
        help="After the comparison, this many rounds of the shipped job with the worker setting --ab at its "
        "first value, then its second (the worker restarted for each): second ÷ first on this box.",
    )
    parser.add_argument(
        "--ab",
        default="CATALOGAN_INFERENCE_GRAPH=plain,folded",
        help="The worker setting --ab-rounds compares, as CATALOGAN_NAME=A,B "
        "[default CATALOGAN_INFERENCE_GRAPH=plain,folded; e.g. CATALOGAN_GATE_OVERLAP=off,on].",
    )
    parser.add_argument(
        "--server-cores",
        type=int,
        default=0,
        help="Run SeaweedFS on the last N cores of this process's affinity and everything else the benchmark "
        "starts (workers, the peer, the ceiling's clients) on the others, as when S3 is another machine "
        "[default 0: all share every core].",
    )
    parser.add_argument(
        "--skip-shipped",
        action="store_true",
        help="No shipped-generator row (it builds the memorization index).",
    )
    args = parser.parse_args()
    if args.ab_rounds:
        ab_setting(args.ab)  # a malformed --ab stops here, before any service starts
    sizes = [int(size) for size in args.images.split(",") if size]

    # A database of its own, claimed as the test suite claims them: no run shares its queues.
    with claimed_redis_db(args.redis_url, f"bench-{os.getpid()}-{uuid.uuid4().hex[:8]}") as (_, redis_url):
        run(args, sizes, redis_url)


def run(args: argparse.Namespace, sizes: list[int], redis_url: str) -> None:
    """Every measurement against the Redis database `redis_url`; prints and writes the report."""
    folder = Path(tempfile.mkdtemp(prefix="catalogan-bench-"))
    seaweed = SeaweedFS(folder / "seaweedfs")
    cores = sorted(os.sched_getaffinity(0))
    if args.server_cores:
        if not 0 < args.server_cores < len(cores):
            raise SystemExit(
                f"--server-cores {args.server_cores}: must leave 1..{len(cores) - 1} cores of {cores}"
            )
        # SeaweedFS inherits the server cores (every thread it starts), then this process and all it starts
        # later move to the rest. PostgreSQL and Redis are outside services and keep every core.
        os.sched_setaffinity(0, cores[-args.server_cores :])
        seaweed.start()
        os.sched_setaffinity(0, cores[: -args.server_cores])
        print(f"SeaweedFS on cores {cores[-args.server_cores :]}, the rest on {cores[: -args.server_cores]}")
    else:
        seaweed.start()
    os.environ.update(seaweed.env())
    db_url = create_database(args.postgres_admin_url, "catalogan_bench")
    database = make_url(db_url).database or ""
    redis_pids = _redis_server_pid(redis_url)
    assert seaweed.process is not None

    def stack_pids() -> dict[str, list[int]]:
        assert seaweed.process is not None
        return {
            "seaweedfs": [seaweed.process.pid],
            "postgresql": _postgres_backends(args.postgres_admin_url, database),
            "redis": redis_pids,
        }

    versus: dict[str, Any] | None = None
    runs: list[dict[str, Any]] = []
    memory: dict[str, Any] | None = None
    planning: dict[str, float] = {}
    try:
        if args.mode != "peer":
            planning = bench_planning(db_url, redis_url, args.plan_images, folder)
        migrate.upgrade(db_url)
        engine = make_engine(db_url)
        factory = make_session_factory(engine)
        store = open_store(f"s3://{TEST_BUCKET}/bench-{uuid.uuid4().hex[:8]}")
        checkpoint = random_generator_checkpoint(args.preset, seed=0)

        def measure_floor(meter: CpuMeter) -> dict[str, Any]:
            return bench_floor(
                checkpoint, store, args.floor_images, args.batch_size, args.upload_threads, meter
            )

        env = pipeline_env(
            CATALOGAN_DATABASE_URL=db_url,
            CATALOGAN_BROKER_URL=redis_url,
            CATALOGAN_STORAGE_URL=store.url,
            CATALOGAN_DATA_DIR=str(folder / "data"),
            CATALOGAN_BATCH_SIZE=str(args.batch_size),
            CATALOGAN_UPLOAD_THREADS=str(args.upload_threads),
            CATALOGAN_DEVICE="cpu",
            **seaweed.env(),
        )
        if args.mode != "floor":
            versus = bench_versus_peer(args, env, factory, store, folder, redis_url, stack_pids)
        api = None
        if args.submit == "http" and args.mode != "peer":
            api = serve_api(factory, store, redis_url, folder / "api-data")
        try:
            if args.mode != "peer":
                runs, memory = bench_end_to_end(
                    env,
                    factory,
                    store,
                    checkpoint,
                    sizes,
                    args.chunk_size,
                    folder,
                    redis_url,
                    measure_floor,
                    stack_pids,
                    args.memory_chunks,
                    args.memory_chunk_size,
                    api.url if api is not None else None,
                )
        finally:
            if api is not None:
                api.stop()
        engine.dispose()
    finally:
        drop_database(args.postgres_admin_url, db_url)
        seaweed.stop()
    if versus is not None:
        print("\n".join(peer_lines(versus)))
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "versus-peer.md").write_text("\n".join(peer_lines(versus)) + "\n")
        print(json.dumps({"versus_peer": versus}))
    if args.mode == "peer":
        return
    print(
        f"planning {args.plan_images:,} images ({planning['chunks']:.0f} chunks): "
        f"SQLite {planning['plan_sqlite_s'] * 1000:.0f} ms, PostgreSQL {planning['plan_postgresql_s'] * 1000:.0f} ms;"
        f" publishing to Redis {planning['publish_redis_s'] * 1000:.0f} ms"
    )
    print(
        f"floor (forward + encode + S3 PUT, {args.upload_threads} threads, batch {args.batch_size}), per run:"
    )
    for run in runs:
        print(run_line(run))
    if memory:
        print(
            f"memory job {memory['chunks']:,} chunks of {memory['chunk_size']}: {memory['images_per_s']:.0f} images/s; "
            f"worker RSS by quarter {' / '.join(f'{value:.0f}' for value in memory['rss_quartiles_mib'])} MiB"
        )
    write_report(args.out, args, planning, runs, memory)
    print(f"report: {args.out / 'report.md'}, chart: {args.out / 'pipeline.png'}")
    print(
        json.dumps(
            {
                "planning": planning,
                "runs": runs,
                "memory": {k: v for k, v in (memory or {}).items() if k != "rss_series"},
                "torch_threads": torch.get_num_threads(),
            }
        )
    )


if __name__ == "__main__":
    main()
