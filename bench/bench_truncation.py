"""Truncation ψ against fidelity and diversity: FID_fm, precision, recall (and accuracy) of the shipped model.

    .venv/bin/python bench/bench_truncation.py --samples-per-class 1000
    .venv/bin/python bench/bench_truncation.py --samples-per-class 500 --psi 1.0 0.7 0.5 --json
    .venv/bin/python bench/bench_truncation.py --samples-per-class 1000 --device cuda   # on a GPU box

For each ψ, `models.evaluation.evaluate_generator` samples the shipped `fashion-cgan` (its checkpoint
verified against generator.sha256) through a wrapper that applies ψ exactly as a job does
(`models.latent_control.truncate`), with the same latents (seed, index) for every ψ, and scores the images
with the project's evaluator against the 10,000 real test images (CAS is skipped: it trains a classifier per
row). Prints a Markdown table: the one in docs/evaluation.md ("Truncation ψ") comes from this script.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from models.default_model import shipped_checkpoint_bytes  # noqa: E402
from models.evaluation import evaluate_generator, real_test_reference  # noqa: E402
from models.inference import LoadedGenerator, load_generator  # noqa: E402
from models.latent_control import truncate  # noqa: E402

DEFAULT_PSI = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3)


class Truncated:
    """The shipped generator behind ψ: what `evaluate_generator` samples from."""

    def __init__(self, generator: LoadedGenerator, psi: float) -> None:
        self.generator = generator
        self.psi = psi
        self.z_dim = generator.z_dim

    def generate(self, class_indices: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        """uint8 images (B, H, W, C) of ψ·z."""
        return self.generator.generate(class_indices, truncate(latents, self.psi))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples-per-class", type=int, default=1000)
    parser.add_argument("--psi", type=float, nargs="+", default=list(DEFAULT_PSI))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--device", default="cpu", help="Where the generator runs: cpu or cuda (fp32 on both)."
    )
    parser.add_argument("--json", action="store_true", help="Print one JSON object per ψ instead of a table.")
    args = parser.parse_args()

    data, sha256 = shipped_checkpoint_bytes()
    generator = load_generator(data, device=args.device, dtype="fp32")
    reference = real_test_reference()
    started = time.perf_counter()
    if not args.json:
        print(
            f"fashion-cgan checkpoint {sha256[:12]}, {args.samples_per_class} images per category, seed {args.seed}"
        )
        print()
        print("| ψ | FID_fm | precision | recall | conditional accuracy | intra-class SSIM |")
        print("|---|---|---|---|---|---|", flush=True)
    for psi in args.psi:  # each row as it is measured: a long run shows its progress
        report = evaluate_generator(
            Truncated(generator, psi),
            args.samples_per_class,
            args.seed,
            source=f"fashion-cgan psi={psi}",
            reference=reference,
            cas_config=None,
        )
        row = {
            "psi": psi,
            "fid_fm": report.fid_fm,
            "precision": report.precision,
            "recall": report.recall,
            "conditional_accuracy": report.conditional_accuracy,
            "intra_class_ssim": report.intra_class_ssim,
            "samples": report.sample_count,
        }
        if args.json:
            print(json.dumps(row, sort_keys=True), flush=True)
            continue
        print(
            f"| {psi:.1f} | {row['fid_fm']:.3f} | {row['precision']:.3f} | {row['recall']:.3f} | "
            f"{row['conditional_accuracy']:.3f} | {row['intra_class_ssim']:.3f} |",
            flush=True,
        )
    print(f"{time.perf_counter() - started:.0f} s in all", file=sys.stderr)


if __name__ == "__main__":
    main()
