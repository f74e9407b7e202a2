"""The memorization gate's near-copy check: the pruned search against the full one, on the shipped index.

    .venv/bin/python bench/bench_near_copy.py [--images 2000] [--dims 8,16,32]

Builds the shipped model's index (Fashion-MNIST's 60,000 training images in evaluator features, threshold
calibrated on the test split: about 30 s), embeds `--images` images of the shipped generator (every
category), then checks them in blocks of 8 rows (the CPU gate's compute block) with one torch thread (a
worker process's) and reports, per method: ms per image, (image, training image) pairs whose full distance
was computed, and whether the decisions equal the full search's. Also at thresholds 2× and 4× the
calibrated one, where more images are near copies and the pruning has more to check. The evaluator's own
cost per image is printed for scale. Rounds alternate between the methods; the median round counts.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

BLOCK = 8


def full_search(reference: torch.Tensor, threshold: float) -> Callable[[torch.Tensor], torch.Tensor]:
    """The unpruned float32 search the gate ran before (every pair, one product per block)."""
    reference_sq = (reference * reference).sum(1)

    def near(features: torch.Tensor) -> torch.Tensor:
        d2 = (features * features).sum(1, keepdim=True) + reference_sq[None, :] - 2.0 * features @ reference.T
        return d2.min(dim=1).values.clamp_min(0.0).sqrt().double() < threshold

    return near


def timed(check: Callable[[torch.Tensor], torch.Tensor], queries: torch.Tensor) -> tuple[float, np.ndarray]:
    started = time.perf_counter()
    flags = torch.cat([check(queries[i : i + BLOCK]) for i in range(0, len(queries), BLOCK)])
    return 1000 * (time.perf_counter() - started) / len(queries), flags.numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--dims", default="8,16,32", help="projection sizes to compare")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--data", default="/usr/share/datasets/fashion-mnist")
    args = parser.parse_args()
    torch.set_num_threads(1)

    import workers.quality_gate as gate
    from models.default_model import shipped_checkpoint_bytes
    from models.evaluator import default_evaluator, to_evaluator_input
    from models.inference import load_generator
    from models.memorization_index import build_fashion_mnist_index
    from workers.pixels import render_pixels

    started = time.perf_counter()
    index = build_fashion_mnist_index(args.data)
    print(
        f"index: {index.train_features.shape}, threshold {index.threshold:.4f} ({time.perf_counter() - started:.0f} s)"
    )
    generator = load_generator(shipped_checkpoint_bytes()[0])
    evaluator = default_evaluator()
    per_class = -(-args.images // generator.config.num_classes)
    pixels = np.concatenate(
        [render_pixels(generator, 11, c, list(range(per_class))) for c in range(generator.config.num_classes)]
    )[: args.images]
    with torch.inference_mode():
        inputs = to_evaluator_input(pixels)
        started = time.perf_counter()
        queries = torch.cat([evaluator.features(inputs[i : i + BLOCK]) for i in range(0, len(inputs), BLOCK)])
        evaluator_ms = 1000 * (time.perf_counter() - started) / len(inputs)
    print(f"evaluator features: {evaluator_ms:.3f} ms per image (for scale)")
    reference = torch.from_numpy(index.train_features)
    dims = [int(d) for d in args.dims.split(",") if d]
    for factor in (1.0, 2.0, 4.0):
        threshold = index.threshold * factor
        methods: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
            "full": full_search(reference, threshold)
        }
        pairs: dict[str, int] = {}
        for k in dims:
            gate.PROJECTED_DIMS = k
            search = gate._PrunedSearch(index.train_features, threshold, torch.device("cpu"))
            counted = 0

            def near(features: torch.Tensor, search: gate._PrunedSearch = search) -> torch.Tensor:
                return search.near(features)

            methods[f"pruned k={k}"] = near
            # pairs checked: the bound's survivors, counted once outside the timed rounds
            with torch.inference_mode():
                for i in range(0, len(queries), BLOCK):
                    block = queries[i : i + BLOCK]
                    counted += int(search.candidates(block, (block * block).sum(1)).sum())
            pairs[f"pruned k={k}"] = counted
        times: dict[str, list[float]] = {name: [] for name in methods}
        flags: dict[str, np.ndarray] = {}
        with torch.inference_mode():
            for _ in range(args.rounds):
                for name, check in methods.items():
                    ms, flags[name] = timed(check, queries)
                    times[name].append(ms)
        full_ms = statistics.median(times["full"])
        print(
            f"\nthreshold {threshold:.4f} ({factor:g}× calibrated): {int(flags['full'].sum())} of {len(queries)} "
            "images are near copies"
        )
        print("| method | ms per image | × full | pairs computed | decisions equal the full search's |")
        print("|---|---:|---:|---:|---|")
        total = len(queries) * len(reference)
        for name in methods:
            ms = statistics.median(times[name])
            computed = pairs.get(name, total)
            print(
                f"| {name} | {ms:.3f} | {full_ms / ms:.2f} | {computed:,} ({computed / total:.1e}) | "
                f"{'yes' if np.array_equal(flags[name], flags['full']) else 'NO'} |"
            )


if __name__ == "__main__":
    main()
