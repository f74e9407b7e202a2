"""Evaluate a generator against the real Fashion-MNIST test set in the evaluator's feature space.

`evaluate_generator` samples `samples_per_class` images per category with deterministic latents, then
computes every metric of `models.metrics` in one `EvaluationReport`. `calibration_report` computes the
same metrics for real train images standing in for generated ones: the row that says what "good" looks
like (FID_fm near 0, conditional accuracy ≈ the evaluator's accuracy, CAS of a real-data classifier).
`diversity_alarm` is the cheap mode-collapse check training calls on its sample grids.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from models.data.fashion_mnist import CATEGORIES, DEFAULT_ROOT, load_fashion_mnist
from models.evaluator import EvaluatorCNN, canonical_images, default_evaluator, embed
from models.metrics.cas import CasConfig, classification_accuracy_score
from models.metrics.conditional_accuracy import conditional_accuracy, per_class_accuracy
from models.metrics.frechet import frechet_distance_from_features
from models.metrics.kid import kernel_inception_distance
from models.metrics.memorization import memorization
from models.metrics.precision_recall import DEFAULT_K as PRECISION_RECALL_K
from models.metrics.precision_recall import precision_recall
from models.metrics.ssim import DEFAULT_MAX_PAIRS, intra_class_ssim
from models.sampling import latents_for

# Real Fashion-MNIST test images score 0.11 (bag) to 0.49 (trouser) mean pairwise SSIM at 32×32
# (measured with models.metrics.ssim on 200 images per class); one image repeated with ±20 noise scores
# 0.83. A category above this threshold is flagged as collapsing.
DIVERSITY_ALARM_SSIM = 0.7
GENERATION_BATCH_SIZE = 250  # images per generator call
DEFAULT_SAMPLES_PER_CLASS = 1000
PERIODIC_REFERENCE_PER_CLASS = 100  # real test images per category that periodic evaluation compares with

GeneratorFn = Callable[[torch.Tensor, torch.Tensor], "np.ndarray | torch.Tensor"]


class SupportsGenerate(Protocol):
    """What `evaluate_generator` needs from a loaded generator (models.inference.LoadedGenerator)."""

    def generate(self, class_indices: torch.Tensor, latents: torch.Tensor) -> np.ndarray | torch.Tensor:
        """uint8 images (B, H, W, C) for class indices (B,) and latents (B, z_dim)."""
        ...


@dataclass
class EvaluationReport:
    """Every metric for one image source (a generator, or real train images for calibration)."""

    source: str
    samples_per_class: int
    sample_count: int
    fid_fm: float
    kid: float
    kid_std: float
    precision: float
    recall: float
    conditional_accuracy: float
    cas: float | None
    intra_class_ssim: float  # mean over categories of the mean pairwise SSIM (high = collapse)
    memorization_copy_fraction: float | None = None  # ≈ 0.01 for fresh real data, → 1 for copies
    memorization_median_ratio: float | None = None  # < 1: nearer the training set than fresh real data
    near_copy_rate: float | None = None  # share below the memorization gate's threshold (0.1 % of real test)
    closest_pairs_png: str | None = None  # where the closest generated/training pairs were drawn
    per_class_accuracy: dict[str, float] = field(default_factory=dict)
    # The evaluator's accuracy on the real reference images of each category (what per_class_accuracy is
    # read against), and per-category FID_fm / precision / recall against that category's real images.
    real_per_class_accuracy: dict[str, float] = field(default_factory=dict)
    per_class_fid_fm: dict[str, float] = field(default_factory=dict)
    per_class_precision: dict[str, float] = field(default_factory=dict)
    per_class_recall: dict[str, float] = field(default_factory=dict)
    per_class_ssim: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    seed: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict of every field."""
        return asdict(self)


@dataclass(frozen=True)
class RealReference:
    """The real test set, embedded once: images (N, 28, 28) uint8, labels (N,), features (N, 128).

    `predictions` (N,) are the evaluator's top-1 classes of the real images: the evaluator's own accuracy
    per category, the bar a generator's conditional accuracy of that category is read against.
    """

    images: np.ndarray
    labels: np.ndarray
    features: np.ndarray
    predictions: np.ndarray | None = None


def build_real_reference(
    images: np.ndarray, labels: np.ndarray, evaluator: EvaluatorCNN | None = None
) -> RealReference:
    """Embed real images with the evaluator to serve as the reference distribution."""
    features, logits = embed(evaluator or default_evaluator(), images)
    return RealReference(
        images=images, labels=np.asarray(labels), features=features, predictions=logits.argmax(axis=1)
    )


@lru_cache(maxsize=2)
def real_test_reference(data_root: Path = DEFAULT_ROOT) -> RealReference:
    """The Fashion-MNIST test split embedded with the shipped evaluator (cached per process)."""
    images, labels = load_fashion_mnist(data_root, "test")
    return build_real_reference(images, labels)


@lru_cache(maxsize=2)
def real_train_features(data_root: Path = DEFAULT_ROOT) -> np.ndarray:
    """Evaluator features of all 60,000 Fashion-MNIST train images, for the memorization check (cached)."""
    images, _ = load_fashion_mnist(data_root, "train")
    features, _ = embed(default_evaluator(), images)
    return features


def sample_generator(
    generator: SupportsGenerate | GeneratorFn,
    samples_per_class: int,
    seed: int,
    *,
    z_dim: int | None = None,
    num_classes: int = len(CATEGORIES),
) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images and their requested labels: image i has class i // samples_per_class, latent (seed, i)."""
    z_dim = z_dim if z_dim is not None else _z_dim_of(generator)
    call = generator.generate if hasattr(generator, "generate") else generator
    labels = np.repeat(np.arange(num_classes), samples_per_class)
    batches = []
    for start in range(0, len(labels), GENERATION_BATCH_SIZE):
        indices = list(range(start, min(start + GENERATION_BATCH_SIZE, len(labels))))
        latents = latents_for(seed, indices, z_dim)
        images = call(torch.as_tensor(labels[indices], dtype=torch.int64), latents)
        batches.append(images.cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images))
    return np.concatenate(batches), labels


def _z_dim_of(generator: object) -> int:
    for holder in (generator, getattr(generator, "config", None)):
        z_dim = getattr(holder, "z_dim", None)
        if isinstance(z_dim, int):
            return z_dim
    raise ValueError("pass z_dim= for a generator callable that has no `z_dim` attribute")


def evaluate_images(
    images: np.ndarray,
    labels: np.ndarray,
    *,
    source: str,
    samples_per_class: int,
    reference: RealReference | None = None,
    evaluator: EvaluatorCNN | None = None,
    cas_config: CasConfig | None = CasConfig(),
    seed: int = 0,
    kid_subsets: int = 100,
    class_names: Sequence[str] = CATEGORIES,
    train_features: np.ndarray | None = None,
    train_images: np.ndarray | None = None,
    closest_pairs_path: Path | None = None,
) -> EvaluationReport:
    """Every metric for uint8 `images` that were requested as `labels`; `cas_config=None` skips CAS.

    With `train_features` (the evaluator's features of the generator's training images) the
    memorization check runs too, with the reference (real test) as the held-out set, and the near-copy
    rate under the memorization gate's threshold; with `train_images` and `closest_pairs_path` as well, a
    PNG of the generated images nearest the training set over their nearest training images.
    """
    started = time.perf_counter()
    evaluator = evaluator or default_evaluator()
    reference = reference or real_test_reference()
    labels = np.asarray(labels)
    features, logits = embed(evaluator, images)
    rng = np.random.default_rng(seed)
    # Precision/recall compare manifolds of equal size; FID and KID use the whole reference.
    real_subset = reference.features[
        rng.choice(len(reference.features), min(len(images), len(reference.features)), replace=False)
    ]
    kid = kernel_inception_distance(features, reference.features, subsets=kid_subsets, seed=seed)
    pr = precision_recall(real_subset, features)
    canonical = canonical_images(images)
    by_class = {name: canonical[labels == index] for index, name in enumerate(class_names)}
    ssim_by_class = intra_class_ssim(by_class, seed=seed)
    cas = (
        None
        if cas_config is None
        else classification_accuracy_score(images, labels, reference.images, reference.labels, cas_config)
    )
    copies = None if train_features is None else memorization(features, train_features, reference.features)
    near_copies, pairs_path = _near_copies(
        images, features, reference.features, train_features, train_images, closest_pairs_path
    )
    per_category = per_category_metrics(features, labels, reference, class_names, seed)
    return EvaluationReport(
        source=source,
        samples_per_class=samples_per_class,
        sample_count=len(images),
        fid_fm=frechet_distance_from_features(features, reference.features),
        kid=kid.mean,
        kid_std=kid.std,
        precision=pr.precision,
        recall=pr.recall,
        conditional_accuracy=conditional_accuracy(logits, labels),
        cas=cas,
        intra_class_ssim=float(np.mean(list(ssim_by_class.values()))) if ssim_by_class else float("nan"),
        memorization_copy_fraction=None if copies is None else copies.copy_fraction,
        memorization_median_ratio=None if copies is None else copies.median_ratio,
        near_copy_rate=near_copies,
        closest_pairs_png=pairs_path,
        per_class_accuracy=per_class_accuracy(logits, labels, class_names),
        real_per_class_accuracy=per_category["real_per_class_accuracy"],
        per_class_fid_fm=per_category["per_class_fid_fm"],
        per_class_precision=per_category["per_class_precision"],
        per_class_recall=per_category["per_class_recall"],
        per_class_ssim=ssim_by_class,
        warnings=_ssim_warnings(ssim_by_class),
        seed=seed,
        seconds=time.perf_counter() - started,
    )


def per_category_metrics(
    features: np.ndarray,
    labels: np.ndarray,
    reference: RealReference,
    class_names: Sequence[str],
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """Per category: the evaluator's real accuracy, and FID_fm, precision and recall against that category.

    Each category's generated features are compared with the real reference images of the same category;
    precision/recall use an equal-size real subset (seeded), as the overall figures do. A category with too
    few images for a metric (k-NN needs more than k = 3 per side) is left out of that metric.
    """
    result: dict[str, dict[str, float]] = {
        "real_per_class_accuracy": {},
        "per_class_fid_fm": {},
        "per_class_precision": {},
        "per_class_recall": {},
    }
    rng = np.random.default_rng(seed)
    for index, name in enumerate(class_names):
        real_mask = reference.labels == index
        if reference.predictions is not None and real_mask.any():
            result["real_per_class_accuracy"][name] = float(
                (reference.predictions[real_mask] == index).mean()
            )
        generated = features[labels == index]
        real = reference.features[real_mask]
        if len(generated) < 2 or len(real) < 2:
            continue
        result["per_class_fid_fm"][name] = frechet_distance_from_features(generated, real)
        subset = real[rng.choice(len(real), min(len(generated), len(real)), replace=False)]
        if min(len(subset), len(generated)) > PRECISION_RECALL_K:
            pr = precision_recall(subset, generated)
            result["per_class_precision"][name] = pr.precision
            result["per_class_recall"][name] = pr.recall
    return result


def _near_copies(
    images: np.ndarray,
    features: np.ndarray,
    held_out_features: np.ndarray,
    train_features: np.ndarray | None,
    train_images: np.ndarray | None,
    closest_pairs_path: Path | None,
) -> tuple[float | None, str | None]:
    """The near-copy rate under the gate's calibrated threshold, and the closest-pairs PNG when asked for."""
    if train_features is None:
        return None, None
    from models.memorization_index import build_index, closest_pairs_png, near_copy_rate

    index = build_index(train_features, held_out_features)
    if train_images is None or closest_pairs_path is None:
        return near_copy_rate(index, features), None
    closest_pairs_path.parent.mkdir(parents=True, exist_ok=True)
    closest_pairs_path.write_bytes(closest_pairs_png(images, train_images, index, features, pairs=16))
    return near_copy_rate(index, features), str(closest_pairs_path)


def evaluate_generator(
    generator: SupportsGenerate | GeneratorFn,
    samples_per_class: int = DEFAULT_SAMPLES_PER_CLASS,
    seed: int = 0,
    *,
    source: str = "generator",
    z_dim: int | None = None,
    reference: RealReference | None = None,
    evaluator: EvaluatorCNN | None = None,
    cas_config: CasConfig | None = CasConfig(),
    train_features: np.ndarray | None = None,
    train_images: np.ndarray | None = None,
    closest_pairs_path: Path | None = None,
) -> EvaluationReport:
    """Sample `samples_per_class` images per category from `generator` and measure them against real test.

    `generator` is a `LoadedGenerator` (anything with `.generate(class_indices, latents)` and `z_dim`) or a
    plain callable `(class_indices (B,) int64, latents (B, z_dim)) -> uint8 (B, H, W[, C])` with `z_dim=`.
    """
    started = time.perf_counter()
    config = getattr(generator, "config", None)
    num_classes = getattr(config, "num_classes", len(CATEGORIES))
    if num_classes != len(CATEGORIES):
        raise ValueError(
            f"the evaluator measures against Fashion-MNIST's {len(CATEGORIES)} categories; "
            f"this generator has {num_classes}"
        )
    images, labels = sample_generator(generator, samples_per_class, seed, z_dim=z_dim)
    report = evaluate_images(
        images,
        labels,
        source=source,
        samples_per_class=samples_per_class,
        reference=reference,
        evaluator=evaluator,
        cas_config=cas_config,
        seed=seed,
        train_features=train_features,
        train_images=train_images,
        closest_pairs_path=closest_pairs_path,
    )
    report.seconds = time.perf_counter() - started
    return report


@lru_cache(maxsize=2)
def periodic_reference(
    data_root: Path = DEFAULT_ROOT, per_class: int = PERIODIC_REFERENCE_PER_CLASS
) -> RealReference:
    """A fixed, seeded subset of the real test set (`per_class` images per category), embedded once per process.

    Periodic evaluation during training compares a few hundred generated images with it: enough to rank
    the steps of one run, cheap enough to run every few hundred steps (its FID_fm is biased upwards by the
    small samples, so compare it only with other periodic figures, not with `catalogan evaluate`).
    """
    images, labels = load_fashion_mnist(data_root, "test")
    rng = np.random.default_rng(0)
    chosen = np.concatenate(
        [rng.choice(np.flatnonzero(labels == c), per_class, replace=False) for c in range(len(CATEGORIES))]
    )
    return build_real_reference(images[chosen], labels[chosen])


def periodic_evaluation(
    generator: SupportsGenerate | GeneratorFn,
    samples_per_class: int,
    *,
    reference: RealReference,
    z_dim: int | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """FID_fm, conditional accuracy and per-category accuracy of a few generated images per category.

    What training records at `--eval-every` steps (the `history.jsonl` keys): fixed latents (`seed`), so
    two steps of one run are measured on the same inputs.
    """
    images, labels = sample_generator(generator, samples_per_class, seed, z_dim=z_dim)
    features, logits = embed(default_evaluator(), images)
    return {
        "fid_fm": frechet_distance_from_features(features, reference.features),
        "conditional_accuracy": conditional_accuracy(logits, labels),
        "per_category_accuracy": per_class_accuracy(logits, labels, CATEGORIES),
    }


def real_train_sample(
    samples_per_class: int, seed: int = 0, data_root: Path = DEFAULT_ROOT
) -> tuple[np.ndarray, np.ndarray]:
    """`samples_per_class` random real train images per category (seeded), ordered like `sample_generator`."""
    images, labels = load_fashion_mnist(data_root, "train")
    rng = np.random.default_rng(seed)
    chosen = np.concatenate(
        [
            rng.choice(np.flatnonzero(labels == c), samples_per_class, replace=False)
            for c in range(len(CATEGORIES))
        ]
    )
    return images[chosen], labels[chosen]


def calibration_report(
    samples_per_class: int = DEFAULT_SAMPLES_PER_CLASS,
    seed: int = 0,
    *,
    data_root: Path = DEFAULT_ROOT,
    reference: RealReference | None = None,
    evaluator: EvaluatorCNN | None = None,
    cas_config: CasConfig | None = CasConfig(),
) -> EvaluationReport:
    """The metrics of real train images against real test: the best a generator could hope to score."""
    images, labels = real_train_sample(samples_per_class, seed, data_root)
    return evaluate_images(
        images,
        labels,
        source="real train (calibration)",
        samples_per_class=samples_per_class,
        reference=reference,
        evaluator=evaluator,
        cas_config=cas_config,
        seed=seed,
    )


def _ssim_warnings(ssim_by_class: Mapping[str, float], threshold: float = DIVERSITY_ALARM_SSIM) -> list[str]:
    return [
        f"possible mode collapse in {name!r}: mean pairwise SSIM {value:.2f} > {threshold:.2f} "
        "(real images: 0.11-0.49)"
        for name, value in ssim_by_class.items()
        if value > threshold
    ]


def diversity_alarm(
    images_by_class: Mapping[str, np.ndarray],
    *,
    threshold: float = DIVERSITY_ALARM_SSIM,
    max_pairs: int = DEFAULT_MAX_PAIRS,
) -> list[str]:
    """Warnings for categories whose images look alike (mean pairwise SSIM above `threshold`); [] when healthy.

    Cheap enough for training to call on each checkpoint's sample grid: uint8 images per category name,
    (N, H, W) or (N, H, W, C), a handful per category is enough.
    """
    canonical = {
        name: canonical_images(images) for name, images in images_by_class.items() if len(images) >= 2
    }
    return _ssim_warnings(intra_class_ssim(canonical, max_pairs=max_pairs), threshold)
