"""The memorization check on constructed feature sets."""

from __future__ import annotations

import numpy as np
import pytest

from models.metrics.memorization import memorization, nearest_distances


@pytest.fixture
def train_and_held_out() -> tuple[np.ndarray, np.ndarray]:
    """1,000 'train' and 300 'held-out' rows from one 16-d Gaussian."""
    rng = np.random.default_rng(5)
    return rng.normal(size=(1000, 16)), rng.normal(size=(300, 16))


def test_nearest_distances_match_brute_force(train_and_held_out: tuple[np.ndarray, np.ndarray]) -> None:
    """Given two sets, the chunked nearest distances equal the brute-force minimum."""
    train, held_out = train_and_held_out
    brute = np.sqrt(((held_out[:, None, :] - train[None, :, :]) ** 2).sum(axis=2)).min(axis=1)
    assert nearest_distances(held_out, train) == pytest.approx(brute, rel=1e-9)


def test_copies_of_training_data_are_flagged(train_and_held_out: tuple[np.ndarray, np.ndarray]) -> None:
    """Given 'generated' rows that are training rows plus tiny noise, nearly all count as copies."""
    train, held_out = train_and_held_out
    copies = train[:200] + 1e-4
    result = memorization(copies, train, held_out)
    assert result.copy_fraction == 1.0
    assert result.median_ratio < 0.01


def test_fresh_samples_of_the_distribution_are_not_flagged(
    train_and_held_out: tuple[np.ndarray, np.ndarray],
) -> None:
    """Given new samples of the same distribution, the copy fraction is about the 1% quantile, ratio ≈ 1."""
    train, held_out = train_and_held_out
    fresh = np.random.default_rng(9).normal(size=(500, 16))
    result = memorization(fresh, train, held_out)
    assert result.copy_fraction < 0.05
    assert 0.8 < result.median_ratio < 1.2
