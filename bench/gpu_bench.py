"""One prepared benchmark for a lent GPU: generation, determinism, the worker in-process, training.

Sections (each time-capped; the JSON summary is rewritten to --out after every section, so a run stopped at
its limit keeps what finished):

0. preflight: torch/CUDA versions, GPU name, which of the project's imports work there;
1. generation per GPU: the shipped generator and `photo-cgan-64` (random weights: cost does not depend on the
   weights), bf16 and fp32, batch 256 to 16k, forward only (CUDA events), plus the full path a worker runs
   (`render_pixels`: latents drawn per index on the CPU, forward, uint8 back to the CPU);
2. determinism probe: the same 256 indices rendered at batch 1, 7, 64, 256 on CUDA and on the CPU: how many
   images and pixels differ from the batch-256 render, and CUDA against the CPU;
3. the worker in-process (`bench/gpu_worker_section.py`): `generate_chunk` on a generator cache on the device,
   SQLite in /dev/shm, an in-memory sink as the object store; chunk sizes 256, 1,024, 4,096 × png and tar × gate
   off and on (plus redraws): images/s, CPU ms per image and CPU time per stage; before it, the Ray Data
   peer's actor (`bench/ray_data_peer.py`, Ray-free) on the same device and sink: catalogan ÷ peer;
4. training on one GPU: steps/s of D step + G step + EMA for fashion-cgan (batch 64, 256) and photo-cgan-64
   (32, 128), with `cudnn.benchmark` off and on (the step functions `run_worker` calls, random data);
5. the worker as P processes sharing the device (`catalogan worker --processes-per-gpu P`), P = 1, 2, 4, 8:
   aggregate images/s of the png job with the gate as shipped, each process with cores // P torch threads
   (`gpu_worker_section.run_processes`): how far more processes per GPU lift the CPU-bound side.

    python bench/gpu_bench.py --out $OUT [--sections 0,1,2,3,4,5] [--budget-s 150]

The next device session: `bash bench/device_session.sh bench` (sections 0, 3, 4 and 5, budget 120 s each;
sections 3 and 5 have not run on a GPU yet; see docs/performance.md "GPU figures").

Runs on a CPU too (small sizes, the `tiny` preset in section 3, for checking the script before a device is
lent): `python bench/gpu_bench.py --device cpu --smoke --out /tmp/gpu-bench` (sections 3 and 5 run so in
tests/workers/test_gpu_bench_worker_section.py).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SHIPPED = Path(__file__).resolve().parents[1] / "models" / "weights" / "fashion-cgan" / "generator.pt"


class Budget:
    """Wall-clock budget of one section: `left()` seconds remain; `over()` once spent."""

    def __init__(self, seconds: float) -> None:
        self.deadline = time.monotonic() + seconds

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def over(self) -> bool:
        return self.left() <= 0


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed_rate(step: Callable[[], int], device: torch.device, seconds: float, warmup: int = 3) -> float:
    """Items per second of `step()` (which returns the items it did), after `warmup` calls; CUDA-synced."""
    for _ in range(warmup):
        step()
    sync(device)
    done, start = 0, time.perf_counter()
    while True:
        done += step()
        if time.perf_counter() - start >= seconds:
            break
    sync(device)
    return done / (time.perf_counter() - start)


def preflight(_: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
        "cpu_count": os.cpu_count(),
        "imports": {},
    }
    for name in (
        "sqlalchemy",
        "pydantic",
        "boto3",
        "celery",
        "ray",
        "db",
        "models.inference",
        "workers.pixels",
        "workers.chunk_generation",
        "workers.quality_gate",
    ):
        try:
            __import__(name)
            info["imports"][name] = "ok"
        except Exception as exc:  # a report of what imports, not a failure
            info["imports"][name] = f"{type(exc).__name__}: {exc}"
    return info


def _generators(smoke: bool) -> list[tuple[str, bytes]]:
    from models.inference import random_generator_checkpoint

    return [
        ("fashion-cgan", SHIPPED.read_bytes()),
        ("photo-cgan-64", random_generator_checkpoint("photo-cgan-64")),
    ]


def generation(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    from models.inference import load_generator
    from models.sampling import latents_for
    from workers.pixels import render_pixels

    budget = Budget(args.budget_s)
    batches = (16, 64) if args.smoke else (256, 1024, 4096, 16384)
    seconds = 0.2 if args.smoke else 1.0
    results: dict[str, Any] = {"forward": {}, "generate": {}, "render_pixels": {}}
    for name, checkpoint in _generators(args.smoke):
        generator = load_generator(checkpoint, device=device)
        # Both graphs' forward, side by side (docs/generation.md, "The folded graph"): a CUDA worker runs plain
        # until this section shows the fold faster there too
        modules = {
            "plain": generator.module,
            "folded": load_generator(checkpoint, device=device, graph="folded").module,
        }
        for dtype_name, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
            for batch in batches:
                if budget.over():
                    results["stopped"] = "budget"
                    return results
                z = torch.randn(batch, generator.z_dim, device=device)
                y = torch.arange(batch, device=device) % generator.config.num_classes
                for graph, module in modules.items():

                    def forward(
                        z: torch.Tensor = z,
                        y: torch.Tensor = y,
                        dtype: torch.dtype = dtype,
                        module: torch.nn.Module = module,
                    ) -> int:
                        with (
                            torch.inference_mode(),
                            torch.autocast(
                                device.type,
                                dtype=dtype,
                                enabled=dtype != torch.float32 and device.type == "cuda",
                            ),
                        ):
                            module(z, y)
                        return z.shape[0]

                    try:
                        rate = timed_rate(forward, device, seconds)
                    except torch.OutOfMemoryError:
                        rate = float("nan")
                        torch.cuda.empty_cache()
                    results["forward"][f"{name}|{graph}|{dtype_name}|{batch}"] = rate
                    print(
                        f"forward {name} {graph} {dtype_name} batch {batch}: {rate:,.0f} images/s", flush=True
                    )
        for batch in batches:
            if budget.over():
                break
            latents = latents_for(0, range(batch), generator.z_dim)
            classes = torch.arange(batch) % generator.config.num_classes
            rate = timed_rate(
                lambda g=generator, c=classes, z=latents: g.generate(c, z).shape[0], device, seconds
            )
            results["generate"][f"{name}|{batch}"] = rate
            print(f"generate (uint8 to CPU) {name} batch {batch}: {rate:,.0f} images/s", flush=True)
        for batch in batches[:3]:
            if budget.over():
                break
            rate = timed_rate(
                lambda g=generator, b=batch: len(render_pixels(g, 7, 3, range(b))), device, seconds, warmup=1
            )
            results["render_pixels"][f"{name}|{batch}"] = rate
            print(f"render_pixels {name} batch {batch}: {rate:,.0f} images/s", flush=True)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return results


def determinism(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    import numpy as np

    from models.inference import load_generator
    from workers.pixels import render_pixels

    indices = list(range(64 if args.smoke else 256))
    devices = [torch.device("cpu")] + ([device] if device.type == "cuda" else [])
    renders: dict[str, dict[int, np.ndarray]] = {}
    for target in devices:
        generator = load_generator(SHIPPED.read_bytes(), device=target)
        renders[target.type] = {}
        for batch in (1, 7, 64, 256):
            parts = [
                render_pixels(generator, 31, 4, indices[start : start + batch])
                for start in range(0, len(indices), batch)
            ]
            renders[target.type][batch] = np.concatenate(parts)

    def differ(a: np.ndarray, b: np.ndarray) -> dict[str, int]:
        return {
            "images": int((a != b).reshape(len(a), -1).any(axis=1).sum()),
            "pixels": int((a != b).sum()),
            "max_abs": int(np.abs(a.astype(int) - b.astype(int)).max()),
        }

    out: dict[str, Any] = {"images": len(indices)}
    for kind, by_batch in renders.items():
        reference = by_batch[256]
        out[kind] = {
            f"batch {b} vs 256": differ(pixels, reference) for b, pixels in by_batch.items() if b != 256
        }
    if "cuda" in renders:
        out["cuda vs cpu (batch 256)"] = differ(renders["cuda"][256], renders["cpu"][256])
    print(json.dumps(out, indent=1), flush=True)
    return out


def worker_in_process(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Section 3: `bench/gpu_worker_section.py` (it needs the worker's stack: SQLAlchemy, pydantic, Pillow)."""
    from bench.gpu_worker_section import run as run_section

    return run_section(args, device)


def worker_processes(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Section 5: the worker as P processes on one device (`bench/gpu_worker_section.py`, `run_processes`)."""
    from bench.gpu_worker_section import run_processes

    return run_processes(args, device)


def training(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    from models.build import build_discriminator, build_generator
    from models.config import get_preset
    from models.ema import make_ema, update_ema
    from models.steps import discriminator_step, draw_noise, generator_step, make_optimizers

    budget = Budget(args.budget_s)
    warmup, timed = (2, 5) if args.smoke else (20, 150)
    results: dict[str, Any] = {}
    cases = [("fashion-cgan", 64), ("fashion-cgan", 256), ("photo-cgan-64", 32), ("photo-cgan-64", 128)]
    for benchmark in (False, True):
        torch.backends.cudnn.benchmark = benchmark
        for preset_name, batch in cases:
            if budget.over():
                results["stopped"] = "budget"
                return results
            preset = get_preset(preset_name)
            model = preset.model
            torch.manual_seed(0)
            generator = build_generator(model).to(device)
            discriminator = build_discriminator(model).to(device)
            ema = make_ema(generator)
            optimizer_g, optimizer_d = make_optimizers(generator, discriminator, preset.train)
            real = (
                torch.rand(batch, model.channels, model.resolution, model.resolution, device=device) * 2 - 1
            )
            labels = torch.randint(0, model.num_classes, (batch,), device=device)
            noise_source = torch.Generator().manual_seed(0)
            for i in range(warmup + timed):
                if i == warmup:
                    sync(device)
                    started = time.perf_counter()
                noise = draw_noise(model, batch, noise_source, device)
                discriminator_step(generator, discriminator, optimizer_d, real, labels, noise, preset.train)
                generator_step(generator, discriminator, optimizer_g, noise, preset.train)
                update_ema(ema, generator, 0.999)
            sync(device)
            rate = timed / (time.perf_counter() - started)
            key = f"{preset_name}|batch {batch}|cudnn.benchmark {'on' if benchmark else 'off'}"
            results[key] = {"steps_per_s": rate, "real_images_per_s": rate * batch}
            print(f"train {key}: {rate:.1f} steps/s", flush=True)
    return results


SECTIONS: dict[str, Callable[[argparse.Namespace, torch.device], dict[str, Any]]] = {
    "0": preflight,
    "1": generation,
    "2": determinism,
    "3": worker_in_process,
    "4": training,
    "5": worker_processes,
}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the sections; the summary (also written to `<out>/gpu_bench.json`)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--sections", default="0,1,2,3,4,5")
    parser.add_argument(
        "--budget-s", type=float, default=60.0, help="wall seconds per section (each is capped)"
    )
    parser.add_argument(
        "--smoke", "--quick", action="store_true", help="tiny sizes, to check the script on a CPU"
    )
    parser.add_argument(
        "--device", choices=["auto", "cpu", "cuda"], default="auto", help="auto: cuda when visible, else cpu"
    )
    section_3 = parser.add_argument_group("section 3 (the worker in-process)")
    section_3.add_argument(
        "--worker-chunk-sizes", help="comma-separated chunk sizes [256,1024,4096; smoke 8,16]"
    )
    section_3.add_argument("--worker-images", type=int, help="images per timed job [16384; smoke 32]")
    section_3.add_argument(
        "--worker-model", help="shipped (fashion-cgan) or a preset with random weights [shipped; smoke tiny]"
    )
    section_3.add_argument("--worker-batch-size", type=int, help="[the worker's default for the device]")
    section_3.add_argument("--worker-upload-threads", type=int, help="[the worker's default, 8]")
    section_3.add_argument("--index-rows", type=int, help="memorization index rows [60000; smoke 512]")
    section_3.add_argument(
        "--redraw-min-confidence", type=float, help="min_confidence of the redraw jobs [0.5]"
    )
    section_5 = parser.add_argument_group("section 5 (the worker as P processes on one device)")
    section_5.add_argument("--processes", help="comma-separated process counts [1,2,4,8; smoke 1,2]")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    summary: dict[str, Any] = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    path = args.out / "gpu_bench.json"
    for section in args.sections.split(","):
        started = time.perf_counter()
        try:
            summary[section] = SECTIONS[section](args, device)
        except Exception:  # one section's failure must not lose the others' figures
            summary[section] = {"error": traceback.format_exc()}
            print(summary[section]["error"], flush=True)
        summary[section + "_seconds"] = round(time.perf_counter() - started, 1)
        path.write_text(json.dumps(summary, indent=2, default=str))
        print(f"== section {section} done in {summary[section + '_seconds']} s", flush=True)
    return summary


if __name__ == "__main__":
    main()
