"""Precision/recall with k-NN manifolds (k = 3) on constructed cases."""

from __future__ import annotations

import numpy as np
import pytest

from models.errors import InsufficientSamplesError
from models.metrics.precision_recall import knn_radii_squared, precision_recall


@pytest.fixture
def real_features() -> np.ndarray:
    """200 points of a 8-d standard Gaussian."""
    return np.random.default_rng(3).normal(size=(200, 8))


def test_identical_sets_have_full_precision_and_recall(real_features: np.ndarray) -> None:
    """Given the generated set equal to the real set, precision and recall are both 1."""
    result = precision_recall(real_features, real_features.copy())
    assert (result.precision, result.recall) == (1.0, 1.0)


def test_disjoint_far_sets_have_zero_precision_and_recall(real_features: np.ndarray) -> None:
    """Given a generated set far away from the real one, precision and recall are both 0."""
    result = precision_recall(real_features, real_features + 1000.0)
    assert (result.precision, result.recall) == (0.0, 0.0)


def test_mode_collapse_keeps_precision_but_loses_recall(real_features: np.ndarray) -> None:
    """Given generated points packed near one real point, precision stays high and recall collapses."""
    rng = np.random.default_rng(4)
    collapsed = real_features[0] + 1e-3 * rng.normal(size=(200, 8))
    result = precision_recall(real_features, collapsed)
    assert result.precision == 1.0
    assert result.recall < 0.05


def test_knn_radius_is_distance_to_third_neighbour() -> None:
    """Given points on a line at 0, 1, 3, 6, 10, the 3rd-neighbour radius of 0 is 6 (squared: 36)."""
    points = np.array([[0.0], [1.0], [3.0], [6.0], [10.0]])
    assert knn_radii_squared(points, k=3)[0] == pytest.approx(36.0)


def test_precision_recall_refuses_too_few_samples() -> None:
    """Given 3 samples for k = 3, there is no 3rd other neighbour: a clear error."""
    with pytest.raises(InsufficientSamplesError, match="k=3"):
        precision_recall(np.zeros((3, 2)), np.zeros((10, 2)))
