"""Truncation ψ against fidelity and diversity: FID_fm, precision, recall (and accuracy) of the shipped model.

    .venv/bin/python bench/bench_truncation.py --samples-per-class 1000
    .venv/bin/python bench/bench_truncation.py --samples-per-class 500 --psi 1.0 0.7 0.5 --json
    .venv/bin/python bench/bench_truncation.py --samples-per-class 1000 --device cuda   # on a GPU box
    .venv/bin/python bench/bench_truncation.py --samples-per-class 500 --json --plot docs/images/truncation-curve.png
    .venv/bin/python bench/bench_truncation.py --from-json rows.jsonl --plot curve.png   # redraw, no measuring

For each ψ, `models.evaluation.evaluate_generator` samples the shipped `fashion-cgan` (its checkpoint
verified against generator.sha256) through a wrapper that applies ψ exactly as a job does
(`models.latent_control.truncate`), with the same latents (seed, index) for every ψ, and scores the images
with the project's evaluator against the 10,000 real test images (CAS is skipped: it trains a classifier per
row). Prints a Markdown table (or, with `--json`, one JSON object per ψ); `--plot` also draws FID_fm,
precision and recall against ψ. The table and the curve in docs/evaluation.md ("Truncation ψ") come from it.
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


def plot_rows(rows: list[dict], path: Path, title: str) -> None:
    """FID_fm (left) and precision, recall and conditional accuracy (right) against ψ, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sorted(rows, key=lambda row: row["psi"])
    psi = [row["psi"] for row in rows]
    figure, (left, right) = plt.subplots(1, 2, figsize=(9, 3.4))
    left.plot(psi, [row["fid_fm"] for row in rows], marker="o", color="tab:purple")
    left.set_ylabel("FID_fm (lower is better)")
    for key, label in (
        ("precision", "precision"),
        ("recall", "recall"),
        ("conditional_accuracy", "accuracy"),
    ):
        right.plot(psi, [row[key] for row in rows], marker="o", label=label)
    right.set_ylim(0, 1)
    right.legend(loc="lower right", fontsize=8)
    for axis in (left, right):
        axis.set_xlabel("truncation ψ")
        axis.grid(alpha=0.3)
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples-per-class", type=int, default=1000)
    parser.add_argument("--psi", type=float, nargs="+", default=list(DEFAULT_PSI))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--device", default="cpu", help="Where the generator runs: cpu or cuda (fp32 on both)."
    )
    parser.add_argument("--json", action="store_true", help="Print one JSON object per ψ instead of a table.")
    parser.add_argument("--plot", type=Path, help="Also draw the rows as a PNG: metrics against ψ.")
    parser.add_argument(
        "--from-json", type=Path, help="Read rows a --json run printed instead of measuring (with --plot)."
    )
    args = parser.parse_args()
    if args.from_json is not None:
        if args.plot is None:
            parser.error("--from-json needs --plot")
        rows = [json.loads(line) for line in args.from_json.read_text().splitlines() if line.strip()]
        plot_rows(rows, args.plot, f"{args.from_json.name}: {rows[0]['samples']} images per ψ")
        return

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
    rows = []
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
        rows.append(row)
        if args.json:
            print(json.dumps(row, sort_keys=True), flush=True)
            continue
        print(
            f"| {psi:.1f} | {row['fid_fm']:.3f} | {row['precision']:.3f} | {row['recall']:.3f} | "
            f"{row['conditional_accuracy']:.3f} | {row['intra_class_ssim']:.3f} |",
            flush=True,
        )
    print(f"{time.perf_counter() - started:.0f} s in all", file=sys.stderr)
    if args.plot is not None:
        plot_rows(
            rows, args.plot, f"fashion-cgan {sha256[:12]}: {args.samples_per_class} images per category"
        )


if __name__ == "__main__":
    main()
