"""Memorization: do generated images sit closer to training images than fresh real images do?

In the evaluator's feature space, each generated image's distance to its nearest training image is
compared with the same distance for real held-out (test) images, which the generator never saw. The
copy threshold is a low quantile (1%) of the held-out distances, so real held-out data scores ≈ 0.01
by construction and a generator that replays its training set scores near 1. The median ratio < 1
says generated images are, as a whole, nearer the training set than new real data is.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from models.errors import InsufficientSamplesError

COPY_QUANTILE = 0.01
ROW_CHUNK = 1024  # query rows per distance block: 1024 × len(reference) float64


@dataclass(frozen=True)
class MemorizationResult:
    """`copy_fraction`: share of generated images nearer to a training image than the 1% closest held-out
    real images are; `median_ratio`: median nearest-train distance, generated over held-out."""

    copy_fraction: float
    median_ratio: float


def nearest_distances(queries: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Euclidean distance from each query row to its nearest reference row."""
    queries = np.asarray(queries, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    if (
        len(reference) == 0
        or queries.ndim != 2
        or reference.ndim != 2
        or queries.shape[1] != reference.shape[1]
    ):
        raise InsufficientSamplesError(f"feature shapes do not fit: {queries.shape} and {reference.shape}")
    squared_norms = (reference * reference).sum(axis=1)
    out = np.empty(len(queries))
    for start in range(0, len(queries), ROW_CHUNK):
        block = queries[start : start + ROW_CHUNK]
        d2 = (block * block).sum(axis=1)[:, None] + squared_norms[None, :] - 2.0 * block @ reference.T
        out[start : start + ROW_CHUNK] = np.sqrt(np.maximum(d2.min(axis=1), 0.0))
    return out


def memorization(
    generated: np.ndarray, train: np.ndarray, held_out: np.ndarray, quantile: float = COPY_QUANTILE
) -> MemorizationResult:
    """Compare generated and held-out real features by their nearest-neighbour distance to train features."""
    held_out_distances = nearest_distances(held_out, train)
    generated_distances = nearest_distances(generated, train)
    threshold = float(np.quantile(held_out_distances, quantile))
    median_held_out = float(np.median(held_out_distances))
    return MemorizationResult(
        copy_fraction=float((generated_distances < threshold).mean()),
        median_ratio=float(np.median(generated_distances)) / median_held_out
        if median_held_out > 0
        else float("nan"),
    )
