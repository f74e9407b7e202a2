"""Ship a better default generator: check issue 15's targets on its evaluation, then write the release files.

    python bench/ship_generator.py bench/candidates/fashion-cgan-cpu-b128/trainable.pt \\
        --eval eval.json [--memorization memorization.json] [--carry bench/candidates/fashion-cgan-cpu-b128] \\
        [--out models/weights/fashion-cgan] [--dry-run] [--force]

`--eval` is what `catalogan evaluate CHECKPOINT --samples 1000 --json --out eval.json` wrote for the same
bytes (its `checkpoint_sha256` must be the file's, or its generator-only form's), with the shipped evaluator.
The near-copy rate comes from that evaluation when it ran with `--memorization`, else from `--memorization`
(a second `catalogan evaluate ... --samples 200 --no-cas --no-calibration --memorization --json` of the same
bytes). The targets, against the model shipped in `--out` now:

    FID_fm ≤ half of the shipped model's          CAS ≥ 0.85           precision ≥ 0.75     recall ≥ 0.65
    every category's conditional accuracy ≥ 0.9 × the evaluator's accuracy on real images of that category
    near-copy rate ≤ 1 %                          the same generator architecture (so the same forward cost)

The script prints one row per target and writes nothing unless every row passes (`--force` writes anyway and
says which failed; `--dry-run` only prints). It writes the generator-only checkpoint (`generator.pt`, G_ema,
configs and the data fingerprint: what inference loads), `generator.sha256`, `metadata.json` (preset, total
steps, configs, data fingerprint, the evaluation's metrics with per-category figures and where they came
from), `samples.png` (one row per category, the same latent per column) and, with `--carry` (a
`bench/train_legs.py` folder), `quality.png` (FID_fm and per-category accuracy against total step) and
`loss.png` from the legs' history. `MODEL_CARD.md` is prose: the script prints what to update in it.

Shipping new bytes makes them the next registered version of `fashion-cgan` (`models/default_model.py`):
a candidate where a version is in production, which the operator promotes; earlier versions keep their
bytes, so their images still verify.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "models" / "weights" / "fashion-cgan"
MIN_SAMPLES_PER_CLASS = 1000  # the targets are measured at 1,000 generated images per category
FID_FRACTION = 0.5  # FID_fm ≤ half of the shipped model's
CAS_MIN = 0.85
PRECISION_MIN = 0.75
RECALL_MIN = 0.65
CATEGORY_RATIO_MIN = 0.9  # of the evaluator's accuracy on real images of the category
NEAR_COPY_MAX = 0.01
METRIC_KEYS = (
    "fid_fm",
    "kid",
    "kid_std",
    "precision",
    "recall",
    "conditional_accuracy",
    "cas",
    "intra_class_ssim",
    "per_class_accuracy",
    "real_per_class_accuracy",
    "per_class_fid_fm",
    "per_class_precision",
    "per_class_recall",
    "per_class_ssim",
)


@dataclass(frozen=True)
class Check:
    """One target: what was measured against what it must be."""

    name: str
    value: float | None
    target: str
    ok: bool
    shipped: float | None = None


def _number(value: Any) -> float | None:
    return None if value is None else float(value)


def check_targets(
    report: Mapping[str, Any],
    shipped_metrics: Mapping[str, Any],
    near_copy_rate: float | None,
    same_architecture: bool,
) -> list[Check]:
    """Issue 15's targets for a candidate's evaluation `report`, against the shipped model's metrics."""
    checks: list[Check] = []
    shipped_fid = _number(shipped_metrics.get("fid_fm"))
    fid = _number(report.get("fid_fm"))
    if shipped_fid is None:
        checks.append(Check("fid_fm", fid, "≤ half of the shipped model's (it has none)", False))
    else:
        bound = FID_FRACTION * shipped_fid
        checks.append(
            Check(
                "fid_fm",
                fid,
                f"≤ {bound:.4f} (half of {shipped_fid:.4f})",
                fid is not None and fid <= bound,
                shipped_fid,
            )
        )
    for key, floor in (("cas", CAS_MIN), ("precision", PRECISION_MIN), ("recall", RECALL_MIN)):
        value = _number(report.get(key))
        checks.append(
            Check(
                key,
                value,
                f"≥ {floor}",
                value is not None and value >= floor,
                _number(shipped_metrics.get(key)),
            )
        )
    generated = report.get("per_class_accuracy") or {}
    real = report.get("real_per_class_accuracy") or {}
    if not generated or not real:
        checks.append(
            Check("per-category accuracy", None, "a per-category report (catalogan evaluate)", False)
        )
    for category in real:
        value = _number(generated.get(category))
        bound = CATEGORY_RATIO_MIN * float(real[category])
        checks.append(
            Check(
                f"accuracy[{category}]",
                value,
                f"≥ {bound:.3f} ({CATEGORY_RATIO_MIN} × real {float(real[category]):.3f})",
                value is not None and value >= bound,
                _number((shipped_metrics.get("per_class_accuracy") or {}).get(category)),
            )
        )
    checks.append(
        Check(
            "near_copy_rate",
            near_copy_rate,
            f"≤ {NEAR_COPY_MAX} (needs an evaluation with --memorization)",
            near_copy_rate is not None and near_copy_rate <= NEAR_COPY_MAX,
            _number(shipped_metrics.get("near_copy_rate")),
        )
    )
    checks.append(
        Check(
            "architecture",
            None,
            "the shipped model's config (same forward cost per image)",
            same_architecture,
        )
    )
    return checks


def _format(value: float | None) -> str:
    return "—" if value is None else f"{value:.4f}"


def print_checks(checks: list[Check]) -> None:
    width = max(len(check.name) for check in checks)
    print(f"{'target':<{width}}  {'shipped':>8}  {'candidate':>9}  rule")
    for check in checks:
        mark = "ok" if check.ok else "MISSED"
        print(
            f"{check.name:<{width}}  {_format(check.shipped):>8}  {_format(check.value):>9}  {check.target}  {mark}"
        )


def _architecture(config: Mapping[str, Any]) -> dict[str, Any]:
    """The parts of a model config that decide the generator's forward cost."""
    return {key: value for key, value in config.items() if key != "categories"}


def read_evaluation(path: Path) -> dict[str, Any]:
    data = json.loads(path.read_text())
    if "report" not in data:
        raise SystemExit(f"ship_generator: {path} is not `catalogan evaluate --json` output (no 'report')")
    return dict(data)


def evaluated_bytes_match(evaluation: Mapping[str, Any], candidates: tuple[str, ...], path: Path) -> None:
    evaluated = evaluation.get("checkpoint_sha256")
    if evaluated not in candidates:
        raise SystemExit(
            f"ship_generator: {path} evaluated checkpoint {str(evaluated)[:16]}…, not this one "
            f"({' or '.join(c[:16] + '…' for c in candidates)})"
        )


def _legs_summary(carry: Path) -> tuple[int | None, list[dict[str, Any]]]:
    legs_path = carry / "legs.json"
    if not legs_path.exists():
        return None, []
    legs = json.loads(legs_path.read_text())["legs"]
    kept = (
        "leg",
        "steps",
        "total_steps_after",
        "seed",
        "command",
        "cpu",
        "trainable_sha256",
        "generator_sha256",
    )
    summary = [{key: leg.get(key) for key in kept} for leg in legs]
    return (int(legs[-1]["total_steps_after"]) if legs else None), summary


def ship(args: argparse.Namespace) -> int:
    from models.build import build_generator
    from models.checkpoint import checkpoint_from_bytes, checkpoint_to_bytes, generator_only, sha256_hex
    from models.config import ModelConfig
    from models.evaluator import DEFAULT_WEIGHTS_PATH, sha256_path_for
    from models.plots import loss_curve_png, quality_curve_png, sample_grid_png
    from models.training_state import sample_images

    source = Path(args.checkpoint)
    out = Path(args.out)
    data = source.read_bytes()
    payload = checkpoint_from_bytes(data)
    generator_bytes = checkpoint_to_bytes(generator_only(payload))
    generator_sha = sha256_hex(generator_bytes)
    shipped_meta = json.loads((out / "metadata.json").read_text()) if (out / "metadata.json").exists() else {}

    evaluation = read_evaluation(Path(args.eval))
    evaluated_bytes_match(evaluation, (sha256_hex(data), generator_sha), Path(args.eval))
    evaluator_sha = sha256_path_for(DEFAULT_WEIGHTS_PATH).read_text().split()[0]
    if evaluation.get("evaluator_sha256") != evaluator_sha:
        raise SystemExit(f"ship_generator: {args.eval} was scored by another evaluator than the shipped one")
    if int(evaluation.get("samples_per_class", 0)) < MIN_SAMPLES_PER_CLASS:
        raise SystemExit(
            f"ship_generator: {args.eval} scored {evaluation.get('samples_per_class')} images per category; "
            f"the targets are for --samples {MIN_SAMPLES_PER_CLASS}"
        )
    report = evaluation["report"]
    near_copy = _number(report.get("near_copy_rate"))
    memorization_source = args.eval if near_copy is not None else None
    if near_copy is None and args.memorization:
        memorization = read_evaluation(Path(args.memorization))
        evaluated_bytes_match(memorization, (sha256_hex(data), generator_sha), Path(args.memorization))
        near_copy = _number(memorization["report"].get("near_copy_rate"))
        memorization_source = args.memorization

    same_architecture = bool(shipped_meta) and _architecture(payload["model_config"]) == _architecture(
        shipped_meta.get("model_config", {})
    )
    checks = check_targets(report, shipped_meta.get("metrics", {}), near_copy, same_architecture)
    print_checks(checks)
    missed = [check.name for check in checks if not check.ok]
    if args.dry_run:
        print(
            f"dry run: {'every target met' if not missed else 'missed: ' + ', '.join(missed)}; nothing written"
        )
        return 0 if not missed else 1
    if missed and not args.force:
        print(f"not shipped: missed {', '.join(missed)} (--force writes anyway)", file=sys.stderr)
        return 1

    total_steps, legs = _legs_summary(Path(args.carry)) if args.carry else (None, [])
    metrics: dict[str, Any] = {key: report[key] for key in METRIC_KEYS if report.get(key) is not None}
    metrics.update(
        {
            "near_copy_rate": near_copy,
            "samples_per_class": int(evaluation["samples_per_class"]),
            "seed": int(evaluation.get("seed", 0)),
            "evaluator_sha256": evaluator_sha,
            "evaluation": Path(args.eval).name,
            "memorization_evaluation": Path(memorization_source).name if memorization_source else None,
        }
    )
    metadata: dict[str, Any] = {
        "preset": shipped_meta.get("preset", "fashion-cgan"),
        "step": total_steps if total_steps is not None else int(payload["step"]),
        "model_config": payload["model_config"],
        "train_config": payload.get("train_config", {}),
        "data_fingerprint": payload.get("data_fingerprint", ""),
        "metrics": metrics,
    }
    if legs:
        metadata["legs"] = legs
    if missed:
        metadata["missed_targets"] = missed

    out.mkdir(parents=True, exist_ok=True)
    (out / "generator.pt").write_bytes(generator_bytes)
    (out / "generator.sha256").write_text(f"{generator_sha}  generator.pt\n")
    (out / "metadata.json").write_text(json.dumps(metadata, indent=2) + "\n")
    config = ModelConfig.from_dict(payload["model_config"])
    module = build_generator(config)
    module.load_state_dict(payload["generator_ema"])
    categories = list(config.categories or [f"class-{i}" for i in range(config.num_classes)])
    grid = sample_images(module, config.num_classes)
    title = f"{metadata['preset']} step {metadata['step']}"
    (out / "samples.png").write_bytes(sample_grid_png(grid, categories, title))
    written = ["generator.pt", "generator.sha256", "metadata.json", "samples.png"]
    if args.carry:
        history = [
            json.loads(line) for line in (Path(args.carry) / "history.jsonl").read_text().splitlines() if line
        ]
        losses = [line for line in history if "d_loss" in line and "g_loss" in line]
        if losses:
            (out / "loss.png").write_bytes(
                loss_curve_png(
                    [line["total_step"] for line in losses],
                    [line["d_loss"] for line in losses],
                    [line["g_loss"] for line in losses],
                    title,
                )
            )
            written.append("loss.png")
        curve = [{**line, "step": line["total_step"]} for line in history if "fid_fm" in line]
        if curve:
            (out / "quality.png").write_bytes(quality_curve_png(curve, title))
            written.append("quality.png")
    print(f"wrote {', '.join(written)} in {out} (generator sha256 {generator_sha[:16]}…)")
    print(
        "now update MODEL_CARD.md: the training section (command, steps, hardware), the metrics table and the "
        "per-category table from metadata.json, the curves; the next `catalogan` start registers these bytes "
        "as the next fashion-cgan version (a candidate to promote where one is in production)"
    )
    return 0 if not missed else 2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "checkpoint", help="the candidate: a trainable, full or generator-only checkpoint file"
    )
    parser.add_argument("--eval", required=True, help="`catalogan evaluate --samples 1000 --json` of it")
    parser.add_argument(
        "--memorization", help="`catalogan evaluate --memorization --json` of it (near-copy rate)"
    )
    parser.add_argument("--carry", help="the bench/train_legs.py folder it came from (steps, curves, legs)")
    parser.add_argument(
        "--out", default=str(DEFAULT_OUT), help="the shipped model's folder [default: %(default)s]"
    )
    parser.add_argument("--dry-run", action="store_true", help="check the targets, write nothing")
    parser.add_argument("--force", action="store_true", help="write even when a target is missed (recorded)")
    return ship(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
