"""Train the shipped models on one GPU in one prepared run, and measure training throughput.

The same per-rank loop `catalogan train --gpus --workers 1` runs under Ray Train (`models.training.run_worker`),
called directly because the GPU image has no Ray. Order:

1. throughput: steps/s and real images/s of one D step + one G step + EMA for `fashion-cgan` at batch 64 and
   256 (random data, 200 timed steps after 30 warm-up steps);
2. `fashion-cgan` for --steps steps on Fashion-MNIST, then `seed-dcgan` for the same number of steps. If the
   measured rate says both will not fit in --budget-s seconds, --steps is lowered to the largest multiple of
   1,000 that fits (printed, and recorded in the JSON) before either run starts;
3. the generator-only checkpoints, final sample grids and loss curves, and a JSON summary go to --out.

    python bench/train_gpu.py --data fashion-mnist:/usr/share/datasets/fashion-mnist --steps 20000 --out OUT
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.build import build_discriminator, build_generator
from models.config import get_preset
from models.ema import make_ema, update_ema
from models.steps import discriminator_step, draw_noise, generator_step, make_optimizers
from models.training import GENERATOR_FILE, TrainRequest, run_worker

WARMUP_STEPS = int(__import__("os").environ.get("BENCH_WARMUP", 30))
TIMED_STEPS = int(__import__("os").environ.get("BENCH_TIMED", 200))


def measure(preset_name: str, batch: int, device: torch.device) -> float:
    """Training steps/s of the plain step functions at `batch` on random data."""
    preset = get_preset(preset_name)
    model = preset.model
    torch.manual_seed(0)
    generator, discriminator = build_generator(model).to(device), build_discriminator(model).to(device)
    ema = make_ema(generator)
    optimizer_g, optimizer_d = make_optimizers(generator, discriminator, preset.train)
    real = torch.rand(batch, model.channels, model.resolution, model.resolution, device=device) * 2 - 1
    labels = torch.randint(0, model.num_classes, (batch,), device=device)
    noise_source = torch.Generator().manual_seed(0)
    for i in range(WARMUP_STEPS + TIMED_STEPS):
        if i == WARMUP_STEPS:
            if device.type == "cuda":
                torch.cuda.synchronize()
            started = time.perf_counter()
        noise = draw_noise(model, batch, noise_source, device)
        discriminator_step(generator, discriminator, optimizer_d, real, labels, noise, preset.train)
        generator_step(generator, discriminator, optimizer_g, noise, preset.train)
        update_ema(ema, generator, 0.999)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return TIMED_STEPS / (time.perf_counter() - started)


def train(
    preset: str, data: str, steps: int, store_root: Path, device: torch.device, out: Path
) -> dict[str, float]:
    """One full run; copies its generator, final grid and loss curve to `out`; returns timing."""
    request = TrainRequest(
        preset=preset,
        data=data,
        steps=steps,
        out_url=store_root.as_uri(),
        name=preset,
        run="gpu",
        checkpoint_every=max(1, steps // 4),
        log_every=max(1, steps // 20),
    )
    started = time.perf_counter()
    run_worker(request, device=device, log=lambda line: print(f"[{preset}] {line}", flush=True))
    seconds = time.perf_counter() - started
    folder = store_root / "models" / preset / "gpu"
    shutil.copy(folder / GENERATOR_FILE, out / f"{preset}-generator.pt")
    shutil.copy(folder / f"samples-{steps:08d}.png", out / f"{preset}-samples.png")
    shutil.copy(folder / f"loss-{steps:08d}.png", out / f"{preset}-loss.png")
    return {"seconds": seconds, "steps_per_s": steps / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="fashion-mnist")
    parser.add_argument("--steps", type=int, default=20_000)
    parser.add_argument("--budget-s", type=float, default=330.0, help="wall seconds for both training runs")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cudnn.benchmark = True
    summary: dict[str, object] = {
        "device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
    }
    throughput = {}
    for preset, batch in (("fashion-cgan", 64), ("fashion-cgan", 256), ("seed-dcgan", 64)):
        rate = measure(preset, batch, device)
        throughput[f"{preset}@{batch}"] = {"steps_per_s": rate, "real_images_per_s": rate * batch}
        print(
            f"throughput {preset} batch {batch}: {rate:.1f} steps/s = {rate * batch:.0f} real images/s",
            flush=True,
        )
    summary["throughput"] = throughput
    # The real runs also load data and write checkpoints; budget with a 1.5× margin on the measured rates.
    per_step = 1.5 * (
        1 / throughput["fashion-cgan@64"]["steps_per_s"] + 1 / throughput["seed-dcgan@64"]["steps_per_s"]
    )
    steps = args.steps
    if steps * per_step > args.budget_s:
        steps = max(1000, int(args.budget_s / per_step) // 1000 * 1000)
        print(f"lowering --steps from {args.steps} to {steps} to fit {args.budget_s:.0f} s", flush=True)
    summary["steps"] = steps
    with tempfile.TemporaryDirectory() as scratch:
        for preset in ("fashion-cgan", "seed-dcgan"):
            summary[preset] = train(preset, args.data, steps, Path(scratch), device, args.out)
            (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2), flush=True)


if __name__ == "__main__":
    main()
