"""What building the shipped model's memorization index costs, stage by stage (wall and CPU seconds, MB).

    nice -n 10 .venv/bin/python bench/bench_memorization_index.py [--root /usr/share/datasets/fashion-mnist]

The stages of `models.default_model.ensure_default_model`'s index build: the fingerprint check, reading the
IDX files, embedding the 60,000 train and 10,000 test images with the shipped evaluator, the float32
calibration the index uses, and (for comparison) the float64 pass it replaced. CPU seconds are the process's
(all threads): on a shared box they move less with other people's load than wall seconds do.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.data.fashion_mnist import DEFAULT_ROOT, load_fashion_mnist
from models.default_model import missing_training_data
from models.evaluator import default_evaluator, embed
from models.memorization_index import build_index
from models.metrics.memorization import nearest_distances


def timed(stages: list[dict[str, Any]], name: str, work: Callable[[], Any]) -> Any:
    """Run `work`, append its wall and CPU seconds to `stages`, return its result."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = work()
    stages.append({"stage": name, "wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu})
    return result


def main() -> None:
    """Time each stage once and print a table (or JSON)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="Fashion-MNIST IDX folder.")
    parser.add_argument("--json", action="store_true", help="Print JSON.")
    args = parser.parse_args()
    stages: list[dict[str, Any]] = []
    problem = timed(stages, "fingerprint check", lambda: missing_training_data(args.root))
    if problem is not None:
        raise SystemExit(problem)
    train = timed(stages, "read train IDX", lambda: load_fashion_mnist(args.root, "train")[0])
    test = timed(stages, "read test IDX", lambda: load_fashion_mnist(args.root, "test")[0])
    evaluator = default_evaluator()
    train_features = timed(stages, "embed 60k train", lambda: embed(evaluator, train)[0])
    test_features = timed(stages, "embed 10k test", lambda: embed(evaluator, test)[0])
    index = timed(stages, "calibrate float32 (index)", lambda: build_index(train_features, test_features))
    old = timed(
        stages, "calibrate float64 (before)", lambda: nearest_distances(test_features, train_features)
    )
    payload = timed(stages, "serialise .npz", index.to_bytes)
    summary = {
        "torch_threads": torch.get_num_threads(),
        "stages": stages,
        "build_cpu_s": sum(s["cpu_s"] for s in stages if "before" not in s["stage"]),
        "build_wall_s": sum(s["wall_s"] for s in stages if "before" not in s["stage"]),
        "index_mb": len(payload) / 1e6,
        "threshold": index.threshold,
        "threshold_float64": float(np.quantile(old, index.quantile)),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    if args.json:
        print(json.dumps(summary, indent=2))
        return
    for stage in stages:
        print(f"{stage['stage']:28} wall {stage['wall_s']:7.1f} s   cpu {stage['cpu_s']:7.1f} s")
    print(
        f"build: wall {summary['build_wall_s']:.1f} s, cpu {summary['build_cpu_s']:.1f} s; "
        f"index {summary['index_mb']:.1f} MB; threshold {index.threshold:.4f} "
        f"(float64 {summary['threshold_float64']:.4f}); peak RSS {summary['peak_rss_mb']:.0f} MB; "
        f"{summary['torch_threads']} torch threads"
    )


if __name__ == "__main__":
    main()
