"""Training step rate in bf16 against fp32: the same `run_worker` loop, preset, batch, data and threads, one run.

    nice -n 10 .venv/bin/python bench/bench_train_precision.py --preset fashion-cgan --batch-size 128 --threads 2

`catalogan train --precision bf16` runs the D and G steps under `torch.autocast(dtype=bfloat16)` with
channels_last tensors (weights and optimiser state stay fp32). Whether that is faster depends on the CPU:
oneDNN has bf16 convolutions on CPUs with AVX512-BF16 or AMX and emulates them (slower than fp32) elsewhere,
so this benchmark measures it on the machine at hand rather than claiming a figure. Each round runs
`models.training.run_worker` (no Ray: Ray's start-up is not a step) in fp32 then in bf16 for --warmup-steps +
--steps steps on Fashion-MNIST, timing the steps after the warm-up with `on_step`; --rounds rounds alternate
the two so that a change of machine load hits both. Prints steps/s of every run and the ratio of the medians;
`results.json` in --out.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ROOT = Path(__file__).resolve().parents[1]


def cpu_description() -> tuple[str, list[str]]:
    """The CPU's model name and the features that decide bf16 speed (Linux; `platform.processor()` elsewhere)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor() or "unknown CPU", []
    model = next(
        (line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "unknown CPU"
    )
    flags = next((line.split(":", 1)[1].split() for line in lines if line.startswith("flags")), [])
    return model, sorted(flag for flag in flags if flag in {"avx512_bf16", "amx_bf16", "amx_tile", "avx512f"})


def time_run(preset: str, data: str, batch: int, precision: str, warmup: int, steps: int) -> float:
    """Steps per second of `run_worker` over the `steps` steps after `warmup`."""
    from models.training import TrainRequest, run_worker

    stamps: dict[int, float] = {}
    with tempfile.TemporaryDirectory() as folder:
        request = TrainRequest(
            preset=preset,
            data=data,
            steps=warmup + steps + 1,  # the last step writes the run's only checkpoint, outside the window
            out_url=Path(folder).as_uri(),
            name="bench",
            run=precision,
            checkpoint_every=10**9,  # only the final one, after the window
            log_every=10**9,
            batch_size=batch,
            precision=precision,
        )
        run_worker(
            request, log=lambda _line: None, on_step=lambda done: stamps.setdefault(done, time.perf_counter())
        )
    return steps / (stamps[warmup + steps] - stamps[warmup])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="fashion-cgan")
    parser.add_argument("--data", default="fashion-mnist")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--warmup-steps", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per run")
    parser.add_argument("--rounds", type=int, default=2, help="fp32 then bf16, this many times")
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results" / "train-precision")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    rates: dict[str, list[float]] = {"fp32": [], "bf16": []}
    for round_ in range(args.rounds):
        for precision in ("fp32", "bf16"):
            rate = time_run(args.preset, args.data, args.batch_size, precision, args.warmup_steps, args.steps)
            rates[precision].append(rate)
            print(
                f"round {round_ + 1} {precision}: {rate:.3f} steps/s ({rate * args.batch_size:.0f} images/s)"
            )
    ratio = statistics.median(rates["bf16"]) / statistics.median(rates["fp32"])
    model, flags = cpu_description()
    print(
        f"{args.preset} batch {args.batch_size}, {torch.get_num_threads()} threads, {model} "
        f"[{' '.join(flags) or 'no AVX512-BF16/AMX'}]: bf16 / fp32 step rate = {ratio:.2f}x"
    )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(
        json.dumps(
            {
                "preset": args.preset,
                "batch_size": args.batch_size,
                "threads": torch.get_num_threads(),
                "cpu": model,
                "cpu_flags": flags,
                "torch": torch.__version__,
                "steps_per_s": rates,
                "bf16_over_fp32": ratio,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
