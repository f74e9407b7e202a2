"""The Ray Data script a catalog team would write instead of catalogan: the yardstick of bench_pipeline.py.

    .venv/bin/python bench/ray_data_peer.py --images 10000 --checkpoint generator.pt --bucket B --prefix P

`ray.data.range(N).map_batches(Gen, batch_size=256, concurrency=<cores>)`: each actor loads the checkpoint
through `models.inference.load_generator`, runs one torch thread, encodes PNGs with Pillow and PUTs each
image with one boto3 `put_object` from a thread pool. Nothing tuned, nothing of catalogan's pipeline (no
SQL, no queue, no provenance, no gate): what the issue measured as the peer. The S3 endpoint and credentials
come from the `AWS_*` environment, as for catalogan.

`run_peer` is what bench_pipeline.py calls, in the same invocation and against the same S3 server as the
catalogan jobs it compares with; Ray must be initialised by the caller (its start-up is not timed, the
actors' start-up and model load are: a user's script pays them on every run).
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BATCH_SIZE = 256
UPLOAD_THREADS = 8


class Gen:
    """One Ray Data actor: the generator loaded once, then forward → PNG → one PUT per image, per batch.

    `device`, `compute_batch` and `client` are for running the same actor without Ray on a lent GPU
    (`run_peer_inline`, section 3 of `bench/gpu_bench.py`): the generator on that device, its forward blocks as
    large as the batch (no padding), and any object with boto3's `put_object(Bucket=, Key=, Body=,
    ContentType=)` instead of a boto3 client. Left at their defaults, it is the CPU script the issue measured.
    """

    def __init__(
        self,
        checkpoint: bytes,
        bucket: str,
        prefix: str,
        seed: int,
        upload_threads: int,
        device: str = "cpu",
        compute_batch: int | None = None,
        client: Any = None,
    ) -> None:
        import torch

        from models.inference import load_generator

        torch.set_num_threads(1)
        self.generator = load_generator(checkpoint, device=device, compute_batch=compute_batch)
        if client is None:
            import boto3

            client = boto3.client("s3")
        self.s3 = client
        self.bucket, self.prefix, self.seed = bucket, prefix, seed
        self.pool = ThreadPoolExecutor(max_workers=upload_threads)

    def _put(self, index: int, pixels: np.ndarray) -> str:
        from PIL import Image

        buffer = io.BytesIO()
        image = Image.fromarray(pixels[:, :, 0] if pixels.shape[2] == 1 else pixels)
        image.save(buffer, format="PNG")
        key = f"{self.prefix}/{index:08d}.png"
        self.s3.put_object(Bucket=self.bucket, Key=key, Body=buffer.getvalue(), ContentType="image/png")
        return key

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        from models.sampling import latents_for

        indices = [int(i) for i in batch["id"]]
        latents = latents_for(self.seed, indices, self.generator.z_dim)
        classes = torch.tensor([i % self.generator.config.num_classes for i in indices], dtype=torch.long)
        pixels = self.generator.generate(classes, latents).numpy()  # (B, H, W, C) uint8
        keys = list(self.pool.map(self._put, indices, pixels))
        return {"key": np.asarray(keys)}

    def close(self) -> None:
        self.pool.shutdown(wait=True)


def run_peer_inline(
    checkpoint: bytes,
    images: int,
    *,
    client: Any,
    device: str,
    batch_size: int = BATCH_SIZE,
    seed: int = 1,
    upload_threads: int = UPLOAD_THREADS,
) -> dict[str, Any]:
    """The peer's actor without Ray: one `Gen` on `device` (one actor per GPU), batches fed in order.

    For a device image that has no Ray. What it leaves out (Ray Data's scheduling, its object store, the
    actor's process) only costs the peer time, so the rate is an upper bound on the Ray Data script's. The
    actor's construction (model load) is timed, as in `run_peer`; its torch thread setting is undone after.
    """
    import torch

    threads = torch.get_num_threads()
    started = time.perf_counter()
    gen = Gen(
        checkpoint,
        "peer",
        "ray-data-peer",
        seed,
        upload_threads,
        device=device,
        compute_batch=batch_size,
        client=client,
    )
    try:
        batches = (
            gen({"id": np.arange(start, min(start + batch_size, images))})["key"]
            for start in range(0, images, batch_size)
        )
        rates = _timed(batches, images, started)
    finally:
        gen.close()
        torch.set_num_threads(threads)
    return {**rates, "batch_size": batch_size, "upload_threads": upload_threads}


def _timed(key_batches: Iterable[np.ndarray], images: int, started: float) -> dict[str, Any]:
    """Consume the peer's output batches (the keys it wrote); its rates since `started`, all images checked."""
    written, first_at, first_rows = 0, 0.0, 0
    for keys in key_batches:
        if not written:
            first_at, first_rows = time.perf_counter(), len(keys)
        written += len(keys)
    finished = time.perf_counter()
    if written != images:
        raise RuntimeError(f"the peer wrote {written} images, expected {images}")
    return {
        "images": images,
        "seconds": finished - started,
        "images_per_s": images / (finished - started),
        # After the first batch came back (actors started, model loaded): the peer's steady rate.
        "steady_images_per_s": (images - first_rows) / (finished - first_at) if finished > first_at else 0.0,
    }


def init_ray(cpus: int) -> None:
    """Start a local Ray for `cpus` actors whose workers can import this module and the project.

    Ray gets one logical CPU more than the actors take: Ray Data's `ReadRange` task needs one too, and with
    exactly `cpus` the actors hold them all and the read never runs (seen here: "3/2 CPU", no progress).
    """
    import ray

    paths = [str(ROOT), str(ROOT / "bench"), os.environ.get("PYTHONPATH", "")]
    os.environ["PYTHONPATH"] = os.pathsep.join(path for path in paths if path)
    ray.init(num_cpus=cpus + 1, include_dashboard=False, log_to_driver=False)


def run_peer(
    checkpoint: bytes,
    images: int,
    *,
    bucket: str,
    prefix: str,
    concurrency: int,
    seed: int = 1,
    batch_size: int = BATCH_SIZE,
    upload_threads: int = UPLOAD_THREADS,
) -> dict[str, Any]:
    """Images/s of the peer for `images` images (Ray already initialised); checks every image came back."""
    import ray

    started = time.perf_counter()
    dataset = ray.data.range(images).map_batches(
        Gen,
        batch_size=batch_size,
        concurrency=concurrency,
        num_cpus=1,
        fn_constructor_args=(checkpoint, bucket, prefix, seed, upload_threads),
    )
    rates = _timed((batch["key"] for batch in dataset.iter_batches(batch_size=None)), images, started)
    return {**rates, "concurrency": concurrency}


def main() -> None:
    """Run the peer alone against the S3 server of the environment."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=10000)
    parser.add_argument("--checkpoint", type=Path, help="A generator checkpoint [default: random tiny].")
    parser.add_argument("--bucket", required=True)
    parser.add_argument("--prefix", default="ray-data-peer")
    parser.add_argument("--concurrency", type=int, default=len(os.sched_getaffinity(0)))
    args = parser.parse_args()
    import ray

    from models.inference import random_generator_checkpoint

    data = args.checkpoint.read_bytes() if args.checkpoint else random_generator_checkpoint("tiny", seed=0)
    init_ray(args.concurrency)
    try:
        print(
            run_peer(data, args.images, bucket=args.bucket, prefix=args.prefix, concurrency=args.concurrency)
        )
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
