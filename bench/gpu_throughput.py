"""GPU figures in one prepared run: generation images/s per GPU and the training step rate.

Measures, on whatever device is present (CUDA if available, else CPU — the same code path):

1. Generator forward images/s for the shipped `fashion-cgan` checkpoint (or a randomly initialised generator of the
   same architecture when no checkpoint is given: the cost does not depend on the weights) at several batch sizes,
   under `torch.inference_mode()` with bf16 autocast on CUDA — exactly `models.inference.LoadedGenerator.generate`.
2. Forward + PNG encode (provenance-free, Pillow, a thread pool the size of the CPU count) images/s: what one worker
   process can deliver before the object store.
3. Training steps/s (and real images/s) of `discriminator_step` + `generator_step` + EMA for `fashion-cgan` and
   `photo-cgan-64`, single process (the plain loop; Ray Train adds DDP on top).

The same run also measures forward images/s on the CPU, so the GPU/CPU ratio comes from one machine.

    python bench/gpu_throughput.py [--checkpoint models/weights/fashion-cgan/generator.pt] [--out DIR]

It imports only torch-level modules of `models/` (no SQL, no Ray), so it runs on a bare CUDA image.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import io
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.build import build_discriminator, build_generator
from models.config import get_preset
from models.ema import make_ema, update_ema
from models.inference import load_generator, random_generator_checkpoint
from models.sampling import latents_for
from models.steps import discriminator_step, draw_noise, generator_step, make_optimizers

WARMUP_ITERATIONS = 3


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def forward_images_per_second(checkpoint: bytes, device: torch.device, batch: int, seconds: float) -> float:
    """Images/s of LoadedGenerator.generate (latents precomputed, uint8 copied back to the CPU)."""
    generator = load_generator(checkpoint, device=device)
    latents = latents_for(0, range(batch), generator.z_dim)
    classes = torch.arange(batch) % generator.config.num_classes
    for _ in range(WARMUP_ITERATIONS):
        generator.generate(classes, latents)
    _sync(device)
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        generator.generate(classes, latents)
        done += batch
    _sync(device)
    return done / (time.perf_counter() - start)


def _encode_png(pixels: torch.Tensor) -> int:
    array = pixels.numpy()
    image = Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False)
    return len(buffer.getvalue())


def forward_encode_images_per_second(
    checkpoint: bytes, device: torch.device, batch: int, seconds: float
) -> float:
    """Images/s of generate + PNG encoding in a thread pool that overlaps the next batch's forward pass."""
    generator = load_generator(checkpoint, device=device)
    latents = latents_for(0, range(batch), generator.z_dim)
    classes = torch.arange(batch) % generator.config.num_classes
    workers = os.cpu_count() or 4
    done, start = 0, time.perf_counter()
    with cf.ThreadPoolExecutor(max_workers=workers) as pool:
        pending: list[cf.Future[int]] = []
        while time.perf_counter() - start < seconds:
            pixels = generator.generate(classes, latents)
            for future in pending:  # the previous batch's encodes ran during this forward
                future.result()
            pending = [pool.submit(_encode_png, image) for image in pixels]
            done += batch
        for future in pending:
            future.result()
    return done / (time.perf_counter() - start)


def training_steps_per_second(preset_name: str, device: torch.device, batch: int, seconds: float) -> float:
    """Steps/s of one D step + one G step + EMA update on random data of the preset's shape."""
    preset = get_preset(preset_name)
    model = preset.model
    torch.manual_seed(0)
    generator, discriminator = build_generator(model).to(device), build_discriminator(model).to(device)
    ema = make_ema(generator)
    optimizer_g, optimizer_d = make_optimizers(generator, discriminator, preset.train)
    real = torch.rand(batch, model.channels, model.resolution, model.resolution, device=device) * 2 - 1
    labels = torch.randint(0, model.num_classes, (batch,), device=device)
    rng = torch.Generator().manual_seed(0)

    def step() -> None:
        noise = draw_noise(model, batch, rng, device)
        discriminator_step(generator, discriminator, optimizer_d, real, labels, noise, preset.train)
        generator_step(generator, discriminator, optimizer_g, noise, preset.train)
        update_ema(ema, generator, preset.train.ema_decay)

    for _ in range(WARMUP_ITERATIONS):
        step()
    _sync(device)
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        step()
        steps += 1
    _sync(device)
    return steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoint", type=Path, help="generator checkpoint (default: random fashion-cgan)")
    parser.add_argument("--seconds", type=float, default=5.0, help="measuring time per figure")
    parser.add_argument(
        "--out", type=Path, default=Path("bench-gpu"), help="folder for results.json and report.md"
    )
    args = parser.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    checkpoint = (
        args.checkpoint.read_bytes()
        if args.checkpoint and args.checkpoint.exists()
        else random_generator_checkpoint("fashion-cgan", seed=0)
    )
    results: dict[str, object] = {
        "device": torch.cuda.get_device_name(0) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "checkpoint": str(args.checkpoint) if args.checkpoint else "random fashion-cgan",
    }
    cpu = torch.device("cpu")
    results["cpu_forward_images_per_s_batch256"] = forward_images_per_second(
        checkpoint, cpu, 256, args.seconds
    )
    forward: dict[int, float] = {}
    gpu = device.type == "cuda"
    for batch in (256, 1024, 4096, 16384) if gpu else (64, 256):
        forward[batch] = forward_images_per_second(checkpoint, device, batch, args.seconds)
        print(f"forward batch {batch}: {forward[batch]:,.0f} images/s", flush=True)
    results["forward_images_per_s"] = forward
    best = max(forward.values())
    results["gpu_over_cpu_forward_ratio"] = best / float(results["cpu_forward_images_per_s_batch256"])  # type: ignore[arg-type]
    encode: dict[int, float] = {}
    for batch in (256, 1024) if gpu else (64,):
        encode[batch] = forward_encode_images_per_second(checkpoint, device, batch, args.seconds)
        print(f"forward+PNG batch {batch}: {encode[batch]:,.0f} images/s", flush=True)
    results["forward_png_images_per_s"] = encode
    training: dict[str, dict[int, float]] = {}
    for preset_name, batches in (
        (("fashion-cgan", (64, 256)), ("photo-cgan-64", (32, 128))) if gpu else (("fashion-cgan", (64,)),)
    ):
        training[preset_name] = {}
        for batch in batches:
            rate = training_steps_per_second(preset_name, device, batch, args.seconds)
            training[preset_name][batch] = rate
            print(
                f"train {preset_name} batch {batch}: {rate:.1f} steps/s = {rate * batch:,.0f} images/s",
                flush=True,
            )
    results["training_steps_per_s"] = training

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    lines = [
        f"# GPU throughput — {results['device']} (torch {results['torch']}, {results['cpu_count']} CPUs)",
        "",
        "| figure | value |",
        "|---|---|",
        f"| CPU forward, batch 256 | {results['cpu_forward_images_per_s_batch256']:,.0f} images/s |",
    ]
    lines += [f"| forward, batch {b} | {v:,.0f} images/s |" for b, v in forward.items()]
    lines += [f"| forward + PNG encode, batch {b} | {v:,.0f} images/s |" for b, v in encode.items()]
    lines += [
        f"| train {p}, batch {b} | {r:.1f} steps/s ({r * b:,.0f} images/s) |"
        for p, rates in training.items()
        for b, r in rates.items()
    ]
    lines += [
        "",
        f"GPU/CPU forward ratio (best batch vs CPU batch 256): {results['gpu_over_cpu_forward_ratio']:.1f}×",
    ]
    (args.out / "report.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
