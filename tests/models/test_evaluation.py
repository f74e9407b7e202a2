"""`evaluate_generator` / `calibration_report` end to end with generator callables and the shipped evaluator."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from models.evaluation import (
    RealReference,
    build_real_reference,
    calibration_report,
    evaluate_generator,
    evaluate_images,
    sample_generator,
)
from models.evaluator import default_evaluator, embed, evaluate_accuracy
from models.metrics.cas import CasConfig

METRIC_FIELDS = {
    "fid_fm",
    "kid",
    "kid_std",
    "precision",
    "recall",
    "conditional_accuracy",
    "cas",
    "intra_class_ssim",
    "per_class_accuracy",
    "per_class_ssim",
    "warnings",
}


@pytest.fixture(scope="module")
def small_reference(fashion_test: tuple[np.ndarray, np.ndarray]) -> RealReference:
    """The first 2,000 Fashion-MNIST test images embedded with the shipped evaluator."""
    images, labels = fashion_test
    return build_real_reference(images[:2000], labels[:2000])


def replaying_generator(images: np.ndarray, labels: np.ndarray):  # type: ignore[no-untyped-def]
    """A 'perfect' generator: for class c it returns a real image of class c picked by the latent."""
    by_class = [images[labels == c] for c in range(10)]

    def generate(class_indices: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        picks = (latents[:, 0].abs() * 1e6).long()
        out = [
            by_class[int(c)][int(p) % len(by_class[int(c)])]
            for c, p in zip(class_indices, picks, strict=True)
        ]
        return torch.from_numpy(np.stack(out))[..., None]  # (B, 28, 28, 1)

    return generate


def noise_generator(class_indices: torch.Tensor, latents: torch.Tensor) -> np.ndarray:
    """A useless generator: uniform noise, whatever was asked."""
    rng = np.random.default_rng(int(latents[0, 0].abs() * 1e6))
    return rng.integers(0, 256, (len(class_indices), 32, 32, 1), dtype=np.uint8)


def test_sampling_is_deterministic_and_ordered_by_class() -> None:
    """Given a callable generator, image i asks for class i // samples_per_class with latent (seed, i)."""
    seen: list[torch.Tensor] = []

    def record(class_indices: torch.Tensor, latents: torch.Tensor) -> np.ndarray:
        seen.append(latents)
        return np.zeros((len(class_indices), 32, 32, 1), dtype=np.uint8)

    images, labels = sample_generator(record, 3, seed=5, z_dim=4)
    sample_generator(record, 3, seed=5, z_dim=4)
    assert images.shape == (30, 32, 32, 1)
    assert labels.tolist() == [c for c in range(10) for _ in range(3)]
    assert torch.equal(seen[0], seen[1])


def test_conditional_accuracy_of_the_real_test_set_equals_the_evaluator_accuracy(
    fashion_test: tuple[np.ndarray, np.ndarray], small_reference: RealReference
) -> None:
    """Given real test images 'requested' as their true labels, conditional accuracy is the evaluator's accuracy."""
    images, labels = fashion_test
    report = evaluate_images(
        images[2000:3000],
        labels[2000:3000],
        source="real test",
        samples_per_class=100,
        reference=small_reference,
        cas_config=None,
    )
    assert report.conditional_accuracy == pytest.approx(
        evaluate_accuracy(default_evaluator(), images[2000:3000], labels[2000:3000])
    )
    assert report.conditional_accuracy > 0.9


def test_real_images_score_far_better_than_noise_and_reports_serialise(
    fashion_train: tuple[np.ndarray, np.ndarray], small_reference: RealReference
) -> None:
    """Given a generator replaying real train images and one emitting noise, every metric ranks them right."""
    images, labels = fashion_train
    real = evaluate_generator(
        replaying_generator(images[:5000], labels[:5000]),
        30,
        seed=1,
        z_dim=8,
        reference=small_reference,
        cas_config=None,
    )
    noise = evaluate_generator(
        noise_generator, 30, seed=1, z_dim=8, reference=small_reference, cas_config=None
    )
    assert real.fid_fm * 10 < noise.fid_fm
    assert real.kid < noise.kid
    assert real.precision > 0.6 > noise.precision
    assert real.recall > 0.4 > noise.recall
    assert real.conditional_accuracy > 0.85 > 0.3 > noise.conditional_accuracy
    document = json.loads(json.dumps(real.to_dict()))
    assert set(document) >= METRIC_FIELDS
    assert document["sample_count"] == 300
    assert (
        set(document["per_class_accuracy"]) == set(document["per_class_ssim"])
        and len(document["per_class_ssim"]) == 10
    )


def test_a_collapsed_generator_raises_the_diversity_alarm_and_loses_recall(
    fashion_train: tuple[np.ndarray, np.ndarray], small_reference: RealReference
) -> None:
    """Given a generator that returns one image per class, SSIM is 1, warnings name classes, recall is low."""
    images, labels = fashion_train
    one_per_class = np.stack([images[labels == c][0] for c in range(10)])

    def collapsed(class_indices: torch.Tensor, latents: torch.Tensor) -> np.ndarray:
        return one_per_class[class_indices.numpy()]

    report = evaluate_generator(collapsed, 20, seed=0, z_dim=8, reference=small_reference, cas_config=None)
    assert report.intra_class_ssim == pytest.approx(1.0)
    assert len(report.warnings) == 10 and "mode collapse" in report.warnings[0]
    assert report.recall < 0.1


@pytest.mark.slow
def test_calibration_row_real_train_vs_real_test(small_reference: RealReference) -> None:
    """Given real train images as the 'generated' set, FID_fm is small, accuracy and CAS are high, no alarms."""
    report = calibration_report(100, seed=0, reference=small_reference, cas_config=CasConfig(epochs=3))
    assert report.source == "real train (calibration)"
    assert report.conditional_accuracy > 0.9
    assert report.cas is not None and report.cas > 0.75
    assert report.precision > 0.6 and report.recall > 0.6
    assert report.warnings == []
    assert (
        report.fid_fm
        < 0.2
        * evaluate_generator(noise_generator, 20, z_dim=8, reference=small_reference, cas_config=None).fid_fm
    )


def test_memorization_flags_a_generator_that_replays_its_training_images(
    fashion_train: tuple[np.ndarray, np.ndarray], small_reference: RealReference
) -> None:
    """Given a generator replaying training images, most images count as copies; real held-out data does not."""
    images, labels = fashion_train
    train_features, _ = embed(default_evaluator(), images[:3000])
    replaying = evaluate_generator(
        replaying_generator(images[:3000], labels[:3000]),
        20,
        z_dim=8,
        reference=small_reference,
        cas_config=None,
        train_features=train_features,
    )
    assert replaying.memorization_copy_fraction is not None and replaying.memorization_copy_fraction > 0.9
    assert replaying.memorization_median_ratio is not None and replaying.memorization_median_ratio < 0.1
    no_check = evaluate_generator(noise_generator, 20, z_dim=8, reference=small_reference, cas_config=None)
    assert no_check.memorization_copy_fraction is None


def test_per_category_metrics_find_the_one_weak_category_the_overall_figures_hide(
    fashion_train: tuple[np.ndarray, np.ndarray], small_reference: RealReference
) -> None:
    """Given a generator replaying real images except for shirts, which it draws as t-shirts,
    when it is evaluated, then shirt alone has a low conditional accuracy against a high real accuracy,
    the worst FID_fm and precision, while the overall accuracy still looks fine."""
    images, labels = fashion_train
    replay = replaying_generator(images[:5000], labels[:5000])
    shirt, tshirt = 6, 0

    def weak_shirts(class_indices: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        return replay(torch.where(class_indices == shirt, tshirt, class_indices), latents)

    report = evaluate_generator(weak_shirts, 30, seed=2, z_dim=8, reference=small_reference, cas_config=None)
    assert report.conditional_accuracy > 0.8  # the overall figure hides it
    assert report.per_class_accuracy["shirt"] < 0.3 < 0.5 < report.real_per_class_accuracy["shirt"]
    others = [name for name in report.per_class_accuracy if name != "shirt"]
    assert (
        set(report.real_per_class_accuracy) == set(report.per_class_fid_fm) == set(report.per_class_accuracy)
    )
    assert report.per_class_fid_fm["shirt"] > 2 * max(report.per_class_fid_fm[name] for name in others)
    assert set(report.per_class_precision) == set(report.per_class_recall) == set(report.per_class_accuracy)
    assert report.per_class_recall["shirt"] < min(report.per_class_recall[name] for name in others)
    # The real accuracy per category is the evaluator's on the reference's real images of that category
    predicted = embed(default_evaluator(), small_reference.images)[1].argmax(axis=1)
    real_shirts = small_reference.labels == shirt
    assert report.real_per_class_accuracy["shirt"] == pytest.approx(
        float((predicted[real_shirts] == shirt).mean())
    )


def test_a_tiny_model_gets_a_per_category_report_and_table(
    small_reference: RealReference, capsys: pytest.CaptureFixture[str]
) -> None:
    """Given a randomly initialised tiny generator over Fashion-MNIST's categories, when it is evaluated and
    the report printed, then every category has its accuracy beside the real one, FID_fm, precision, recall."""
    from models.build import build_generator
    from models.cli_evaluate import per_category_table, print_report_table
    from models.config import get_preset, with_categories
    from models.data.fashion_mnist import CATEGORIES

    torch.manual_seed(0)
    model = with_categories(get_preset("tiny").model, CATEGORIES)
    generator = build_generator(model).eval()

    @torch.no_grad()
    def tiny(class_indices: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        images = generator(latents, class_indices)  # (B, 1, 8, 8) in [-1, 1]
        return ((images + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)

    report = evaluate_generator(tiny, 10, z_dim=model.z_dim, reference=small_reference, cas_config=None)
    for field in ("per_class_accuracy", "real_per_class_accuracy", "per_class_fid_fm", "per_class_precision"):
        assert list(getattr(report, field)) == list(CATEGORIES), field
    assert min(report.real_per_class_accuracy.values()) > 0.5  # real images: the evaluator knows them
    assert min(report.per_class_fid_fm.values()) > 0  # a random generator is far from every category
    table = per_category_table(report)
    assert list(table.columns[0].cells) == list(CATEGORIES)
    assert [column.header for column in table.columns][1:4] == ["cond. accuracy", "real accuracy", "ratio"]
    print_report_table([report])
    assert "per category" in capsys.readouterr().out
