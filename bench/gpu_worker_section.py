"""Section 3 of `bench/gpu_bench.py`: the chunk worker in-process on the device, images/s and CPU per stage.

Each job goes through the real worker function (`workers.chunk_generation.generate_chunk`: claim, forward,
gate, encode in the upload pool overlapped with the next forward, PUT, fenced row upserts, completion) with:

- a `GeneratorCache` on the device (`--device`; on CUDA the worker's batch is `CUDA_WORKER_BATCH_SIZE`, as
  `catalogan worker` sets it when `CATALOGAN_BATCH_SIZE` is unset);
- SQLite in /dev/shm (a tmpfs: the SQL cost without a disk), the schema from Alembic when it is installed,
  else `Base.metadata.create_all` (the device image may lack Alembic; the result says which);
- `SinkStore`, an in-memory object store that keeps the model's own objects and counts, then drops, every
  image and shard: the near-free sink, so the figures are the worker's, not a server's;
- jobs planned with `db.planning.submit_job` (publisher: none; the chunks run here one after another);
- `finalize_job` (manifests) after the last chunk when pyarrow is importable (the result says whether).

Matrix (each cell one timed job of `--worker-images` images, after one untimed warm-up job per gate mode):
chunk size (`--worker-chunk-sizes`, default 256, 1024, 4096: the planning default is measured here) × output
format (png, tar) × gate (`off`: a model version without a memorization index; `on`: the gate as shipped, a
memorization index of `--index-rows` random 128-d features (the shipped model's index is 60,000 × 128; the
cost of the search depends on the size, not the values; its threshold 0 makes no near copies) and
`min_confidence` 0); then one `redraw` job per format at the largest chunk size: the same index plus
`quality_gate: {min_confidence: --redraw-min-confidence, max_redraws: 3}`, which exercises redraws; then one
job per format at the largest chunk size with the gate on and gate overlap switched the other way
(`on-serial` on CUDA, where `CATALOGAN_GATE_OVERLAP=auto` overlaps the gate with the next forward pass;
`on-overlap` on a CPU, where auto does not).

Then the peer a user would write instead (`bench/ray_data_peer.py`'s actor, the same one `bench_pipeline.py`
runs under Ray Data on the CPU) on the same device and into the same sink, without Ray (the device image has
none; Ray only adds cost, so this is an upper bound on the script's rate): one actor per GPU, its forward
blocks as large as its batch, at the script's batch of 256 and at the worker's batch. `versus_peer` gives
catalogan's png images/s (gate off and as shipped, per chunk size) ÷ the peer's best: issue 11's comparison.

Per job: images asked / generated (done + rejected) / rejected, images/s, this process's CPU seconds and
CPU ms per image, and per stage (calls, wall seconds, CPU seconds of the thread that ran it): `sql` (every
transaction of the worker function: claim, lease renewal, rows + completion), `forward` (latents + forward +
uint8 to the CPU), `gate` (evaluator, nearest neighbour and the redraws' forwards), `encode` (PNG with
provenance, in the upload threads), `put` (the sink's PUT), `finalize`. Stage wall times of the upload
threads overlap the forward: sum the CPU seconds, not the wall seconds. Gate stats from the image rows:
images scored, images redrawn, redraws in total, rejected, mean and minimum score.

Results go to `<out>/gpu_worker_section.json` after every job (a run stopped at its time limit keeps what
finished) and are returned to `gpu_bench.py` for its summary. Imports only what `workers.chunk_generation`
already needs (torch, numpy, Pillow, SQLAlchemy, pydantic, pydantic-settings): no boto3, Celery, Ray, Redis.

On a CPU (for checking it before a device is lent; about 10 s):

    python bench/gpu_bench.py --device cpu --smoke --sections 3 --out /tmp/gpu-bench
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "models" / "weights" / "fashion-cgan" / "generator.pt"
RESULT_FILE = "gpu_worker_section.json"
KEEP_PREFIXES = ("models/",)  # the sink keeps these (checkpoints, indexes); images and shards are dropped


@dataclass
class StageClock:
    """Calls, wall seconds and thread CPU seconds per stage; thread-safe (the upload threads report too)."""

    totals: dict[str, list[float]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        wall, cpu = time.perf_counter(), time.thread_time()
        try:
            yield
        finally:
            spent_wall, spent_cpu = time.perf_counter() - wall, time.thread_time() - cpu
            with self.lock:
                entry = self.totals.setdefault(name, [0, 0.0, 0.0])
                entry[0] += 1
                entry[1] += spent_wall
                entry[2] += spent_cpu

    def take(self) -> dict[str, dict[str, float]]:
        """The totals since the last call, then zero."""
        with self.lock:
            taken, self.totals = self.totals, {}
        return {
            name: {"calls": int(calls), "wall_s": round(wall, 4), "cpu_s": round(cpu, 4)}
            for name, (calls, wall, cpu) in sorted(taken.items())
        }


def _sink_store(clock: StageClock) -> Any:
    from db.storage.keys import validate_key
    from db.storage.memory import MemoryStore

    class SinkStore(MemoryStore):
        """Keeps `models/...` objects; counts and drops every other PUT (images, shards, manifests)."""

        def __init__(self) -> None:
            super().__init__("memory://bench-sink")
            self.objects_dropped = 0
            self.bytes_dropped = 0
            self._count_lock = threading.Lock()

        def put(self, key: str, data: bytes, *, content_type: str = "application/octet-stream") -> None:
            with clock.stage("put"):
                if key.startswith(KEEP_PREFIXES):
                    super().put(key, data, content_type=content_type)
                    return
                validate_key(key)
                with self._count_lock:
                    self.objects_dropped += 1
                    self.bytes_dropped += len(data)

    return SinkStore()


def _instrument(clock: StageClock) -> Callable[[], None]:
    """Wrap the worker function's stages in `clock`; returns the undo."""
    import workers.chunk_generation as worker

    originals = {
        name: getattr(worker, name) for name in ("_forward", "_gated", "encode_with_digest", "transaction")
    }

    def forward(*args: Any, **kwargs: Any) -> Any:
        with clock.stage("forward"):
            return originals["_forward"](*args, **kwargs)

    def gated(*args: Any, **kwargs: Any) -> Any:
        with clock.stage("gate"):
            return originals["_gated"](*args, **kwargs)

    def encode(*args: Any, **kwargs: Any) -> Any:
        with clock.stage("encode"):
            return originals["encode_with_digest"](*args, **kwargs)

    @contextlib.contextmanager
    def transaction(factory: Any) -> Iterator[Any]:
        with clock.stage("sql"), originals["transaction"](factory) as session:
            yield session

    replaced = {
        "_forward": forward,
        "_gated": gated,
        "encode_with_digest": encode,
        "transaction": transaction,
    }
    for name, value in replaced.items():
        setattr(worker, name, value)

    def undo() -> None:
        for name, value in originals.items():
            setattr(worker, name, value)

    return undo


def _schema(url: str) -> str:
    """Create the schema: Alembic when importable (what production runs), else the tables' metadata."""
    try:
        import alembic  # noqa: F401
    except ImportError:
        from sqlalchemy import create_engine

        from db.tables import Base

        engine = create_engine(url)
        Base.metadata.create_all(engine)
        engine.dispose()
        return "create_all (no alembic)"
    from db import migrate

    migrate.upgrade(url)
    return "alembic"


def _register(
    factory: Any, store: Any, name: str, checkpoint: bytes, categories: Sequence[str], metrics: Any
) -> Any:
    """A production model version of `checkpoint` (stored in `store`), with `metrics` (the index entry)."""
    from db.engine import transaction
    from db.status import ModelVersionStatus
    from db.tables import ModelVersion

    key = f"models/{name}/1/generator.ckpt"
    store.put(key, checkpoint)
    with transaction(factory) as session:
        row = ModelVersion(
            name=name,
            version=1,
            preset="bench",
            architecture="cgan",
            config={},
            categories=list(categories),
            checkpoint_uri=store.uri(key),
            checkpoint_sha256=hashlib.sha256(checkpoint).hexdigest(),
            status=ModelVersionStatus.PRODUCTION,
            metrics=metrics,
        )
        session.add(row)
        session.flush()
    return row


def _random_index(store: Any, rows: int) -> dict[str, Any]:
    """A memorization index of `rows` random 128-d features, threshold 0 (never a near copy), stored."""
    from models.evaluator import FEATURE_DIM
    from models.memorization_index import MemorizationIndex, put_index

    features = np.random.default_rng(0).standard_normal((rows, FEATURE_DIM), dtype=np.float32)
    return put_index(store, "models/bench-index/index.npz", MemorizationIndex(features, 0.0, 0.999))


def _gate_stats(factory: Any, job_id: str) -> dict[str, Any]:
    from sqlalchemy import func, select

    from db.status import ImageStatus
    from db.tables import Image

    with factory() as session:
        scored, redrawn, redraws, mean, low = session.execute(
            select(
                func.count(Image.score),
                func.count().filter(Image.redraws > 0),
                func.coalesce(func.sum(Image.redraws), 0),
                func.avg(Image.score),
                func.min(Image.score),
            ).where(Image.job_id == job_id)
        ).one()
        rejected = session.scalar(
            select(func.count()).where(Image.job_id == job_id, Image.status == ImageStatus.REJECTED)
        )
    return {
        "scored": int(scored),
        "redrawn_images": int(redrawn),
        "redraws_total": int(redraws),
        "rejected": int(rejected or 0),
        "score_mean": None if mean is None else round(float(mean), 4),
        "score_min": None if low is None else round(float(low), 4),
    }


def _model(args: argparse.Namespace) -> tuple[str, bytes]:
    from models.inference import random_generator_checkpoint

    name = getattr(args, "worker_model", None) or ("tiny" if args.smoke else "shipped")
    if name == "shipped":
        return "fashion-cgan", SHIPPED.read_bytes()
    return name, random_generator_checkpoint(name, seed=0)


def _ints(text: str) -> list[int]:
    return [int(part) for part in str(text).split(",") if part.strip()]


class WorkerBench:
    """The in-process worker of section 3, set up once: SQLite in /dev/shm, the sink, two model versions.

    `run_job(format, gate, chunk, count)` plans one job and runs every chunk through `generate_chunk`; `close()`
    shuts the pools and removes the database. Section 3 runs its matrix on one; section 5 (`processes`) runs
    one per process.
    """

    def __init__(self, args: argparse.Namespace, device: torch.device) -> None:
        from db.engine import make_engine, make_session_factory, transaction
        from db.pipeline_settings import WorkerSettings
        from db.tables import Tenant
        from models.inference import CUDA_WORKER_BATCH_SIZE, load_generator, resolve_backend, resolve_graph
        from workers.chunk_generation import ChunkContext
        from workers.generator_cache import GeneratorCache

        try:
            from workers.finalize import finalize_job
        except ImportError:  # pyarrow (the Parquet manifest) is not on every device image
            finalize_job = None  # type: ignore[assignment]

        self.device = device
        self.redraw_confidence = float(getattr(args, "redraw_min_confidence", None) or 0.5)
        self.index_rows = int(getattr(args, "index_rows", None) or (512 if args.smoke else 60000))
        self.clock = StageClock()
        self.store = _sink_store(self.clock)
        shm = Path("/dev/shm")
        self.folder = Path(
            tempfile.mkdtemp(prefix="catalogan-gpu-worker-", dir=shm if shm.is_dir() else None)
        )
        url = f"sqlite:///{self.folder / 'catalogan.db'}"
        self.schema = _schema(url)
        self.engine = make_engine(url)
        self.factory = make_session_factory(self.engine)

        self.model_name, self.checkpoint = _model(args)
        self.categories = list(load_generator(self.checkpoint).categories)
        index_entry = _random_index(self.store, self.index_rows)
        self.versions = {
            "off": _register(self.factory, self.store, "bench-plain", self.checkpoint, self.categories, {}),
            "on": _register(
                self.factory,
                self.store,
                "bench-gated",
                self.checkpoint,
                self.categories,
                {"memorization_index": index_entry},
            ),
        }
        self.tenant_id = uuid.uuid4().hex
        with transaction(self.factory) as session:
            session.add(Tenant(id=self.tenant_id, name=f"bench-{self.tenant_id[:6]}"))

        overrides: dict[str, Any] = {"max_attempts": 1, "retry_delay_seconds": 0}
        if device.type == "cuda":
            overrides["batch_size"] = CUDA_WORKER_BATCH_SIZE  # what build_context sets on a CUDA worker
        if getattr(args, "worker_batch_size", None):
            overrides["batch_size"] = int(args.worker_batch_size)
        if getattr(args, "worker_upload_threads", None):
            overrides["upload_threads"] = int(args.worker_upload_threads)
        self.settings = WorkerSettings().model_copy(update=overrides)
        self.pool = ThreadPoolExecutor(max_workers=self.settings.upload_threads, thread_name_prefix="upload")
        self.finalize = finalize_job is not None

        def on_job_finished(job_id: str) -> None:
            if finalize_job is not None:
                with self.clock.stage("finalize"):
                    finalize_job(self.factory, self.store, job_id)

        self.overlap = self.settings.overlaps_gate(str(device))  # what `catalogan worker` does on this device
        self.gate_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gate")
        self.ctx = ChunkContext(
            session_factory=self.factory,
            store=self.store,
            generators=GeneratorCache(  # the backend and graph `catalogan worker` runs on this device
                self.store,
                device=str(device),
                max_entries=2,
                backend=resolve_backend(self.settings.inference_backend, device),
                graph=resolve_graph(self.settings.inference_graph, device),
            ),
            settings=self.settings,
            worker_name="gpu-bench",
            pool=self.pool,
            gate_pool=self.gate_pool if self.overlap else None,
            device=str(device),
            on_job_finished=on_job_finished,
        )
        self.switched = "on-serial" if self.overlap else "on-overlap"  # the gate on, overlap the other way
        self._undo = _instrument(self.clock)

    def describe(self) -> dict[str, Any]:
        """What every result of this bench shares."""
        return {
            "device": torch.cuda.get_device_name(0) if self.device.type == "cuda" else "cpu",
            "model": self.model_name,
            "categories": len(self.categories),
            "batch_size": self.settings.batch_size,
            "upload_threads": self.settings.upload_threads,
            "gate_overlap": self.overlap,
            "torch_threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(),
            "database": f"SQLite in {self.folder.parent}",
            "schema": self.schema,
            "finalize": self.finalize,
            "index_rows": self.index_rows,
        }

    def run_job(self, output_format: str, gate: str, chunk: int, count: int) -> dict[str, Any]:
        """One timed job of `count` images (gate off / on / redraw / the switched overlap), all its figures."""
        from db.planning import parse_job_spec, submit_job
        from db.status import JobStatus
        from db.tables import Job
        from workers.chunk_generation import ChunkOutcome, generate_chunk

        version = self.versions["off" if gate == "off" else "on"]
        spec: dict[str, Any] = {
            "model": version.name,
            "items": [{"category": self.categories[0], "count": count}],
            "seed": 1234,
            "output_format": output_format,
            "chunk_size": chunk,
        }
        if gate == "redraw":
            spec["quality_gate"] = {"min_confidence": self.redraw_confidence, "max_redraws": 3}
        overlapped = self.overlap != (gate == self.switched)
        self.ctx.gate_pool = self.gate_pool if overlapped else None
        self.clock.take()
        dropped = (self.store.objects_dropped, self.store.bytes_dropped)
        started_at = time.time()
        wall, cpu = time.perf_counter(), time.process_time()
        planned = submit_job(
            self.factory,
            parse_job_spec(spec),
            tenant_id=self.tenant_id,
            model_version=version,
            publisher=lambda queue, chunk_ids: None,
        )
        outcomes = [generate_chunk(self.ctx, chunk_id) for chunk_id in planned.chunk_ids]
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        seconds, cpu_s = time.perf_counter() - wall, time.process_time() - cpu
        bad = [outcome.value for outcome in outcomes if outcome is not ChunkOutcome.SUCCEEDED]
        if bad:
            raise RuntimeError(f"{output_format}/{gate}/chunk {chunk}: chunk outcomes {bad}")
        with self.factory() as session:
            job = session.get(Job, planned.job_id)
            assert job is not None
            status, done, rejected, failed = (
                job.status,
                job.images_done,
                job.images_rejected,
                job.images_failed,
            )
            finished = job.chunks_finished
        return {
            "format": output_format,
            "gate": gate,
            "chunk_size": chunk,
            "chunks": len(planned.chunk_ids),
            "chunks_finished": int(finished),
            "images_asked": count,
            "images_generated": int(done) + int(rejected),
            "images_done": int(done),
            "images_rejected": int(rejected),
            "images_failed": int(failed),
            # `succeeded` once finalized; `running` (every chunk finished) when finalize_job is not importable
            "job_status": status.value if isinstance(status, JobStatus) else str(status),
            "started_at": started_at,  # epoch seconds: section 5 lines up the processes' jobs
            "seconds": round(seconds, 4),
            "images_per_s": round(count / seconds, 1),
            "process_cpu_s": round(cpu_s, 4),
            "cpu_ms_per_image": round(1000 * cpu_s / count, 4),
            "objects_put": self.store.objects_dropped - dropped[0],
            "bytes_put": self.store.bytes_dropped - dropped[1],
            "stages": self.clock.take(),
            "gate_stats": _gate_stats(self.factory, planned.job_id) if gate != "off" else None,
        }

    def close(self) -> None:
        self._undo()
        self.pool.shutdown(wait=True)
        self.gate_pool.shutdown(wait=True)
        self.engine.dispose()
        for path in sorted(self.folder.glob("*")):
            path.unlink()
        self.folder.rmdir()


def run(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Run the matrix on `device`; the results (also written to `<args.out>/gpu_worker_section.json`)."""
    budget_end = time.monotonic() + float(args.budget_s)
    chunk_sizes = _ints(
        getattr(args, "worker_chunk_sizes", None) or ("8,16" if args.smoke else "256,1024,4096")
    )
    images = int(getattr(args, "worker_images", None) or (32 if args.smoke else 16384))
    out_path = Path(args.out) / RESULT_FILE

    bench = WorkerBench(args, device)
    result: dict[str, Any] = {
        **bench.describe(),
        "images_per_job": images,
        "chunk_sizes": chunk_sizes,
        "runs": [],
        "peer": [],
    }

    def write() -> None:
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(result, indent=2))

    try:
        for gate in ("off", "on"):  # untimed: model load, evaluator and index to the device, first kernels
            bench.run_job("png", gate, chunk_sizes[0], chunk_sizes[0])
        # The peer first: its two jobs are short, and the comparison is what issue 11 asks of a GPU
        for peer_batch in sorted({8 if args.smoke else 256, bench.settings.batch_size}):
            if time.monotonic() >= budget_end:
                break
            peer = _run_peer(bench.checkpoint, images, bench.store, device, peer_batch)
            result["peer"].append(peer)
            print(f"peer batch {peer_batch}: {peer['images_per_s']:,.0f} images/s", flush=True)
            write()
        cells = [
            (output_format, gate, chunk)
            for chunk in chunk_sizes
            for output_format in ("png", "tar")
            for gate in ("off", "on")
        ] + [
            (output_format, gate, chunk_sizes[-1])
            for gate in ("redraw", bench.switched)
            for output_format in ("png", "tar")
        ]
        for output_format, gate, chunk in cells:
            if time.monotonic() >= budget_end:
                result["stopped"] = "budget"
                break
            run = bench.run_job(output_format, gate, chunk, max(images, chunk))
            result["runs"].append(run)
            print(
                f"worker {output_format} gate {gate} chunk {chunk}: {run['images_per_s']:,.0f} images/s, "
                f"CPU {run['cpu_ms_per_image']:.3f} ms/image",
                flush=True,
            )
            write()
        result["gate_on_vs_off"] = _gate_ratios(result["runs"])
        result["versus_peer"] = _versus_peer(result["runs"], result["peer"])
        write()
    finally:
        bench.close()
    return result


class _SinkClient:
    """boto3's `put_object` over the section's sink, so the peer PUTs where the worker does."""

    def __init__(self, store: Any) -> None:
        self.store = store

    def put_object(self, *, Bucket: str, Key: str, Body: bytes, ContentType: str) -> None:
        self.store.put(Key, Body, content_type=ContentType)


def _run_peer(
    checkpoint: bytes, images: int, store: Any, device: torch.device, batch_size: int
) -> dict[str, Any]:
    """The Ray Data peer's actor on `device` into `store`, Ray-free; what reached the sink is checked."""
    from bench.ray_data_peer import run_peer_inline

    before = store.objects_dropped
    peer = run_peer_inline(
        checkpoint, images, client=_SinkClient(store), device=str(device), batch_size=batch_size
    )
    if store.objects_dropped - before != images:
        raise RuntimeError(f"the peer PUT {store.objects_dropped - before} images, expected {images}")
    return peer


def _versus_peer(runs: list[dict[str, Any]], peers: list[dict[str, Any]]) -> dict[str, float]:
    """catalogan's png images/s (gate off, gate as shipped) ÷ the peer's best images/s, per chunk size."""
    best = max((peer["images_per_s"] for peer in peers), default=0.0)
    return {
        f"png|chunk {run['chunk_size']}|{run['gate']} / peer": round(run["images_per_s"] / best, 3)
        for run in runs
        if best and run["format"] == "png" and run["gate"] in ("off", "on")
    }


def _gate_ratios(runs: list[dict[str, Any]]) -> dict[str, float]:
    """images/s with the gate on (and with redraws) ÷ gate off, per format and chunk size."""
    rates = {(run["format"], run["gate"], run["chunk_size"]): run["images_per_s"] for run in runs}
    ratios = {}
    for (output_format, gate, chunk), rate in sorted(rates.items()):
        off = rates.get((output_format, "off", chunk))
        if gate != "off" and off:
            ratios[f"{output_format}|chunk {chunk}|{gate} / off"] = round(rate / off, 3)
    return ratios


# Section 5: the worker as P processes sharing one device (`catalogan worker --processes-per-gpu P`).
READY, RESULT = "SECTION5-READY", "SECTION5-RESULT "
CHILD_SETTINGS = ("smoke", "worker_model", "worker_batch_size", "worker_upload_threads", "index_rows")


def run_processes(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Section 5: aggregate images/s of P worker processes on one device, for each P of `--processes`.

    One process per GPU leaves the CPU side of the worker (latents, the gate's glue, PNG encode with provenance,
    the PUT client, SQL) to one GIL while the GPU's forward does hundreds of thousands of images/s. Here P
    fresh interpreters each set up a `WorkerBench` on the device (their own SQLite and sink, torch threads =
    cores // P, as the worker gives its children), run one untimed job, wait until all are ready, then run one
    timed png job with the gate as shipped at the largest chunk size, together. The aggregate is all their
    images over the span from the first start to the last finish; `scaling` divides it by P = 1's.
    Results go to `<out>/gpu_worker_processes.json` after every P.
    """
    from workers.cli import gpu_split, usable_cores

    budget_end = time.monotonic() + float(args.budget_s)
    counts = _ints(getattr(args, "processes", None) or ("1,2" if args.smoke else "1,2,4,8"))
    images = int(getattr(args, "worker_images", None) or (32 if args.smoke else 16384))
    chunk = _ints(getattr(args, "worker_chunk_sizes", None) or ("16" if args.smoke else "4096"))[-1]
    cores = usable_cores()
    out_path = Path(args.out) / "gpu_worker_processes.json"
    settings = {name: getattr(args, name, None) for name in CHILD_SETTINGS}
    result: dict[str, Any] = {"device": str(device), "cores": cores, "images_per_process": images}
    result.update(chunk_size=chunk, runs=[])
    for count in counts:
        if time.monotonic() >= budget_end:
            result["stopped"] = "budget"
            break
        _, threads = gpu_split(["0"], count, cores)[0]  # what the supervisor gives each child
        command = [sys.executable, str(Path(__file__).resolve()), "--child"]
        command += [json.dumps({**settings, "device": str(device), "threads": threads})]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        children = [
            subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
            for _ in range(count)
        ]
        try:
            for child in children:  # every process set up and warmed up before any timed work
                _read_marker(child, READY)
            for child in children:
                assert child.stdin is not None
                child.stdin.write(f"{chunk} {images}\n")
                child.stdin.flush()
            runs = [json.loads(_read_marker(child, RESULT)) for child in children]
        finally:
            for child in children:
                if child.stdin is not None:
                    child.stdin.close()
                child.wait(timeout=120)
        start = min(run["started_at"] for run in runs)
        end = max(run["started_at"] + run["seconds"] for run in runs)
        done = sum(run["images_done"] + run["images_rejected"] for run in runs)
        entry = {
            "processes": count,
            "torch_threads": threads,
            "images": done,
            "span_s": round(end - start, 4),
            "images_per_s": round(done / (end - start), 1),
            "per_process_images_per_s": [run["images_per_s"] for run in runs],
            "cpu_ms_per_image": round(sum(run["process_cpu_s"] for run in runs) * 1000 / done, 4),
        }
        result["runs"].append(entry)
        print(f"worker x{count} processes on {device}: {entry['images_per_s']:,.0f} images/s", flush=True)
        base = result["runs"][0]["images_per_s"]
        result["scaling"] = {
            str(run["processes"]): round(run["images_per_s"] / base, 3) for run in result["runs"]
        }
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(result, indent=2))
    return result


def _read_marker(child: Any, marker: str) -> str:
    """The rest of the first line of `child`'s stdout that starts with `marker`; raises if it exits first."""
    assert child.stdout is not None
    for line in child.stdout:
        if line.startswith(marker):
            return line[len(marker) :].strip()
    raise RuntimeError(f"a section 5 process exited with {child.wait()} before {marker.strip()}")


def _child(settings: dict[str, Any]) -> None:
    """One section 5 process: set up, one untimed job, READY, then the timed job stdin asks for, RESULT."""
    torch.set_num_threads(int(settings["threads"]))
    args = argparse.Namespace(**{name: settings.get(name) for name in CHILD_SETTINGS})
    bench = WorkerBench(args, torch.device(settings["device"]))
    try:
        bench.run_job("png", "on", 16, 16)
        print(READY, flush=True)
        chunk, images = (int(part) for part in sys.stdin.readline().split())
        run = bench.run_job("png", "on", chunk, images)
        print(RESULT + json.dumps(run), flush=True)
    finally:
        bench.close()


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        _child(json.loads(sys.argv[2]))
    else:
        sys.exit("gpu_worker_section.py is run by bench/gpu_bench.py (sections 3 and 5)")
