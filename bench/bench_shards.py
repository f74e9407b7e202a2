"""Sharded output (`tar`) vs one object per image (`png`): images/s of the chunk worker on the same stack.

    .venv/bin/python bench/bench_shards.py --images 5000 --preset fashion-cgan --store s3
    .venv/bin/python bench/bench_shards.py --images 5000 --preset tiny --store s3
    python bench/bench_shards.py --device cuda --store local --images 50000   # on a GPU

Each job runs through the real worker function (`workers.chunk_generation.generate_chunk`: claim, forward,
encode in the upload pool overlapped with the next forward, PUT, fenced row upserts, completion, finalize
with manifests) in this process, on SQLite and either a SeaweedFS S3 server started here (`--store s3`) or
a local folder (`--store local`). The png and tar jobs alternate (`--repeats` pairs) so both see the same
machine load; the chunk size is the same for both (`--chunk-size`, default 1,000 = one shard per chunk).
The generator has random weights (throughput does not depend on them). `--device` (default: cuda when
visible, else cpu) places the generator; on CUDA the batch defaults to the worker's CUDA batch, as
`catalogan worker` sets it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from db import migrate  # noqa: E402
from db.engine import make_engine, make_session_factory  # noqa: E402
from db.pipeline_settings import WorkerSettings  # noqa: E402
from db.planning import parse_job_spec, submit_job  # noqa: E402
from db.status import JobStatus  # noqa: E402
from db.storage import ObjectStore, open_store  # noqa: E402
from db.tables import ModelVersion  # noqa: E402
from models.inference import random_generator_checkpoint  # noqa: E402
from tests.pipeline import job_row, make_model_version, make_tenant  # noqa: E402
from tests.services import TEST_BUCKET, SeaweedFS  # noqa: E402
from workers.chunk_generation import ChunkContext, ChunkOutcome, generate_chunk  # noqa: E402
from workers.finalize import finalize_job  # noqa: E402
from workers.generator_cache import GeneratorCache  # noqa: E402


def _publish_nothing(queue: str, chunk_ids: Sequence[int]) -> None:
    """Chunks run in this process, one after another."""


def run_job(
    ctx: ChunkContext, tenant_id: str, model: ModelVersion, output_format: str, images: int, chunk: int
) -> float:
    """Seconds from submit to a finalized job of `images` images in `output_format`."""
    started = time.perf_counter()
    planned = submit_job(
        ctx.session_factory,
        parse_job_spec(
            {
                "model": "bench",
                "items": [{"category": str(model.categories[0]), "count": images}],
                "seed": int(time.time_ns() & 0xFFFFFF),
                "output_format": output_format,
                "chunk_size": chunk,
            }
        ),
        tenant_id=tenant_id,
        model_version=model,
        publisher=_publish_nothing,
    )
    for chunk_id in planned.chunk_ids:
        assert generate_chunk(ctx, chunk_id) is ChunkOutcome.SUCCEEDED
    elapsed = time.perf_counter() - started
    assert job_row(ctx.session_factory, planned.job_id).status is JobStatus.SUCCEEDED
    return elapsed


def main() -> None:
    """Parse arguments, run the alternating png / tar jobs, print images/s and the ratio."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--chunk-size", type=int, default=1000)
    parser.add_argument("--preset", default="fashion-cgan")
    parser.add_argument("--store", choices=["s3", "local"], default="s3")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument(
        "--device",
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="cpu, cuda or cuda:N [cuda when visible, else cpu]",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        help="images per forward call [64 on the CPU, the worker's CUDA batch on CUDA]",
    )
    parser.add_argument("--upload-threads", type=int, default=8)
    parser.add_argument(
        "--out",
        type=Path,
        default=ROOT / "bench-results" / "shards",
        help="Folder for report.md and shards.png.",
    )
    args = parser.parse_args()
    from models.inference import CPU_WORKER_BATCH_SIZE, CUDA_WORKER_BATCH_SIZE
    from workers.context import resolve_device

    try:
        args.device = resolve_device(args.device)
    except Exception as exc:  # WorkerConfigError: one line naming the device
        parser.error(f"--device: {exc}")
    if args.batch_size is None:
        args.batch_size = CUDA_WORKER_BATCH_SIZE if args.device.startswith("cuda") else CPU_WORKER_BATCH_SIZE
    if not args.device.startswith("cuda"):
        torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))

    folder = Path(tempfile.mkdtemp(prefix="catalogan-bench-shards-"))
    seaweed = None
    if args.store == "s3":
        seaweed = SeaweedFS(folder / "seaweedfs")
        seaweed.start()
        os.environ.update(seaweed.env())
    try:
        url = f"sqlite:///{folder / 'catalogan.db'}"
        migrate.upgrade(url)
        engine = make_engine(url)
        factory = make_session_factory(engine)
        store: ObjectStore = (
            open_store(f"s3://{TEST_BUCKET}/bench-{uuid.uuid4().hex[:8]}")
            if args.store == "s3"
            else open_store((folder / "objects").as_uri())
        )
        checkpoint = random_generator_checkpoint(args.preset, seed=0)
        from models.inference import load_generator

        categories = load_generator(checkpoint).categories
        model = make_model_version(
            factory, checkpoint=checkpoint, store=store, categories=categories, name="bench"
        )
        tenant_id = make_tenant(factory)
        pool = ThreadPoolExecutor(max_workers=args.upload_threads)
        settings = WorkerSettings(batch_size=args.batch_size, upload_threads=args.upload_threads)
        ctx = ChunkContext(
            session_factory=factory,
            store=store,
            generators=GeneratorCache(store, device=args.device),
            settings=settings,
            worker_name="bench",
            pool=pool,
            device=args.device,
            on_job_finished=lambda job_id: finalize_job(factory, store, job_id),
        )
        run_job(ctx, tenant_id, model, "png", args.batch_size, args.batch_size)  # warm-up: model load, JIT
        seconds: dict[str, list[float]] = {"png": [], "tar": []}
        for _ in range(args.repeats):
            for output_format in ("png", "tar"):
                seconds[output_format].append(
                    run_job(ctx, tenant_id, model, output_format, args.images, args.chunk_size)
                )
        pool.shutdown(wait=True)
        engine.dispose()
    finally:
        if seaweed is not None:
            seaweed.stop()
    rates = {name: [args.images / value for value in values] for name, values in seconds.items()}
    for name, values in rates.items():
        print(
            f"{name}: {statistics.median(values):,.0f} images/s (runs: {', '.join(f'{v:,.0f}' for v in values)})"
        )
    ratio = statistics.median(rates["tar"]) / statistics.median(rates["png"])
    setup = (
        f"{args.images:,} images per job, chunk {args.chunk_size}, preset {args.preset}, store {args.store}, "
        f"batch {args.batch_size}, {args.upload_threads} upload threads, SQLite, device {args.device}, "
        f"{torch.get_num_threads()} torch threads"
    )
    print(f"tar / png = {ratio:.2f}x  [{setup}]")
    write_report(args.out, rates, ratio, setup)
    print(f"report: {args.out / 'report.md'}, chart: {args.out / 'shards.png'}")


def write_report(out: Path, rates: dict[str, list[float]], ratio: float, setup: str) -> None:
    """report.md (images/s per run and the ratio) and shards.png (a bar per run)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    lines = [
        "# Sharded output (tar) vs one object per image (png)",
        "",
        f"`{' '.join(sys.argv)}` — {setup}.",
        "",
        "| format | median images/s | runs |",
        "|---|---:|---|",
    ]
    for name, values in rates.items():
        runs = ", ".join(f"{value:,.0f}" for value in values)
        lines.append(f"| {name} | {statistics.median(values):,.0f} | {runs} |")
    lines += ["", f"tar / png = **{ratio:.2f}x** (medians, runs alternating png, tar)."]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    figure, axis = plt.subplots(figsize=(6, 4))
    labels = [f"{name} #{run + 1}" for name, values in rates.items() for run in range(len(values))]
    values = [value for series in rates.values() for value in series]
    colours = ["tab:blue" if label.startswith("png") else "tab:orange" for label in labels]
    axis.bar(labels, values, color=colours)
    axis.set_ylabel("images/s")
    axis.set_title(f"tar / png = {ratio:.2f}x")
    figure.tight_layout()
    figure.savefig(out / "shards.png", dpi=100)
    plt.close(figure)


if __name__ == "__main__":
    main()
