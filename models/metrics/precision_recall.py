"""Improved precision and recall with k-NN manifolds (Kynkäänniemi et al., 2019), k = 3.

Each set's manifold is the union of balls around its samples, each ball's radius being the distance to
that sample's k-th nearest neighbour within its own set. Precision is the fraction of generated samples
inside the real manifold (fidelity); recall is the fraction of real samples inside the generated manifold
(coverage — a mode-collapsed generator has low recall).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from models.errors import InsufficientSamplesError

DEFAULT_K = 3
ROW_CHUNK = 1024  # rows of the distance matrix held at once: 1024 × N float64


@dataclass(frozen=True)
class PrecisionRecall:
    """Precision and recall, each in [0, 1]."""

    precision: float
    recall: float


def _squared_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances (len(a), len(b)), clipped at 0 against round-off."""
    d2 = (a * a).sum(axis=1)[:, None] + (b * b).sum(axis=1)[None, :] - 2.0 * a @ b.T
    return np.maximum(d2, 0.0)


def knn_radii_squared(features: np.ndarray, k: int = DEFAULT_K) -> np.ndarray:
    """Squared distance from each row to its k-th nearest other row (the row itself is the 0-th)."""
    if len(features) <= k:
        raise InsufficientSamplesError(
            f"k-NN radii with k={k} need more than {k} samples, got {len(features)}"
        )
    radii = np.empty(len(features))
    for start in range(0, len(features), ROW_CHUNK):
        d2 = _squared_distances(features[start : start + ROW_CHUNK], features)
        radii[start : start + ROW_CHUNK] = np.partition(d2, k, axis=1)[:, k]
    return radii


def coverage_fraction(queries: np.ndarray, manifold: np.ndarray, radii_squared: np.ndarray) -> float:
    """The fraction of query rows that fall inside at least one ball of the manifold."""
    inside = 0
    for start in range(0, len(queries), ROW_CHUNK):
        d2 = _squared_distances(queries[start : start + ROW_CHUNK], manifold)
        inside += int((d2 <= radii_squared[None, :]).any(axis=1).sum())
    return inside / len(queries)


def precision_recall(real: np.ndarray, generated: np.ndarray, k: int = DEFAULT_K) -> PrecisionRecall:
    """Precision (generated inside the real manifold) and recall (real inside the generated manifold)."""
    real = np.asarray(real, dtype=np.float64)
    generated = np.asarray(generated, dtype=np.float64)
    if real.ndim != 2 or generated.ndim != 2 or real.shape[1] != generated.shape[1]:
        raise InsufficientSamplesError(f"feature shapes do not fit: {real.shape} and {generated.shape}")
    return PrecisionRecall(
        precision=coverage_fraction(generated, real, knn_radii_squared(real, k)),
        recall=coverage_fraction(real, generated, knn_radii_squared(generated, k)),
    )
