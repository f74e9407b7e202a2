"""Intra-class SSIM (the collapse alarm), conditional accuracy and CAS."""

from __future__ import annotations

import numpy as np
import pytest

from models.evaluation import diversity_alarm
from models.metrics.cas import CasConfig, classification_accuracy_score
from models.metrics.conditional_accuracy import conditional_accuracy, per_class_accuracy
from models.metrics.ssim import gaussian_window, mean_pairwise_ssim, ssim_pairs


def naive_ssim(x: np.ndarray, y: np.ndarray) -> float:
    """SSIM of one pair by explicit loops over every 11×11 window position (Wang et al., 2004)."""
    w = gaussian_window().numpy()
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    x, y = x.astype(np.float64), y.astype(np.float64)
    values = []
    for i in range(x.shape[0] - 10):
        for j in range(x.shape[1] - 10):
            px, py = x[i : i + 11, j : j + 11], y[i : i + 11, j : j + 11]
            mx, my = (w * px).sum(), (w * py).sum()
            vx, vy = (w * (px - mx) ** 2).sum(), (w * (py - my) ** 2).sum()
            cov = (w * (px - mx) * (py - my)).sum()
            values.append(((2 * mx * my + c1) * (2 * cov + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2)))
    return float(np.mean(values))


def test_ssim_matches_naive_window_loop(fashion_test: tuple[np.ndarray, np.ndarray]) -> None:
    """Given two real images, the convolutional SSIM equals the explicit per-window computation."""
    images, _ = fashion_test
    assert ssim_pairs(images[:1], images[1:2])[0] == pytest.approx(naive_ssim(images[0], images[1]), rel=1e-7)


def test_identical_images_score_one_and_real_classes_stay_below_the_alarm(
    fashion_test: tuple[np.ndarray, np.ndarray],
) -> None:
    """Given one sneaker repeated, mean pairwise SSIM is 1; real sneakers are far lower, and no alarm is raised."""
    images, labels = fashion_test
    sneakers = images[labels == 7][:40]
    assert mean_pairwise_ssim(np.repeat(sneakers[:1], 8, axis=0)) == pytest.approx(1.0)
    assert mean_pairwise_ssim(sneakers) < 0.6
    real_by_class = {str(c): images[labels == c][:24] for c in range(10)}
    assert diversity_alarm(real_by_class) == []


def test_diversity_alarm_names_the_collapsed_category(fashion_test: tuple[np.ndarray, np.ndarray]) -> None:
    """Given one category whose images are one image plus faint noise, the alarm names that category only."""
    images, labels = fashion_test
    rng = np.random.default_rng(0)
    collapsed = np.clip(
        np.repeat(images[labels == 8][:1], 16, axis=0).astype(int) + rng.integers(-10, 10, (16, 28, 28)),
        0,
        255,
    ).astype(np.uint8)
    warnings = diversity_alarm({"bag": collapsed, "sneaker": images[labels == 7][:16]})
    assert len(warnings) == 1
    assert "'bag'" in warnings[0]


def test_diversity_alarm_accepts_rgb_generator_output(fashion_test: tuple[np.ndarray, np.ndarray]) -> None:
    """Given (N, 32, 32, 3) uint8 images, as an RGB preset produces, the alarm runs and flags copies."""
    images, _ = fashion_test
    rgb = np.repeat(np.pad(images[:1], ((0, 0), (2, 2), (2, 2)))[..., None], 3, axis=-1)
    assert len(diversity_alarm({"copies": np.repeat(rgb, 6, axis=0)})) == 1


def test_conditional_accuracy_counts_requested_labels() -> None:
    """Given logits whose argmax matches 3 of 4 requests, accuracy is 0.75 and per-class figures add up."""
    logits = np.eye(3)[[0, 1, 2, 2]]
    requested = np.array([0, 1, 2, 1])
    assert conditional_accuracy(logits, requested) == 0.75
    assert per_class_accuracy(logits, requested, ["a", "b", "c"]) == {"a": 1.0, "b": 0.5, "c": 1.0}


@pytest.mark.slow
def test_cas_on_real_train_images_is_high_and_on_shuffled_labels_is_chance(
    fashion_train: tuple[np.ndarray, np.ndarray], fashion_test: tuple[np.ndarray, np.ndarray]
) -> None:
    """Given real train images as the 'generated' set, CAS is high; with shuffled labels it drops to chance."""
    images, labels = fashion_train
    test_images, test_labels = fashion_test
    config = CasConfig(epochs=3)
    cas = classification_accuracy_score(
        images[:2000], labels[:2000], test_images[:1000], test_labels[:1000], config
    )
    shuffled = np.random.default_rng(0).permutation(labels[:2000])
    cas_shuffled = classification_accuracy_score(
        images[:2000], shuffled, test_images[:1000], test_labels[:1000], config
    )
    assert cas > 0.8
    assert cas_shuffled < 0.3
