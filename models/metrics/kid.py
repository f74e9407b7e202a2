"""KID: the unbiased estimator of squared MMD with the cubic polynomial kernel (Bińkowski et al., 2018).

    k(x, y) = (xᵀy / d + 1)³
    MMD²ᵤ = 1/(m(m−1)) Σ_{i≠j} k(xᵢ, xⱼ) + 1/(n(n−1)) Σ_{i≠j} k(yᵢ, yⱼ) − 2/(mn) Σ_{i,j} k(xᵢ, yⱼ)

averaged over random subsets (as in the reference implementation) so its cost stays bounded and its
spread is reported. Unlike FID, KID is unbiased: its expectation is 0 for two samples of one distribution,
so it can come out slightly negative.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from models.errors import InsufficientSamplesError

DEFAULT_SUBSETS = 100
DEFAULT_SUBSET_SIZE = 1000


@dataclass(frozen=True)
class KidResult:
    """Mean and standard deviation of MMD²ᵤ over the subsets."""

    mean: float
    std: float


def polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The cubic polynomial kernel matrix (N, M) between rows of x (N, D) and y (M, D)."""
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """The unbiased MMD² estimate between x (m, D) and y (n, D); needs m, n ≥ 2."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    m, n = len(x), len(y)
    if m < 2 or n < 2 or x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise InsufficientSamplesError(
            f"MMD² needs (≥2, D) and (≥2, D) features, got {x.shape} and {y.shape}"
        )
    k_xx = polynomial_kernel(x, x)
    k_yy = polynomial_kernel(y, y)
    k_xy = polynomial_kernel(x, y)
    # The diagonal k(xᵢ, xᵢ) is dropped: it is what makes the plain V-statistic biased.
    within_x = (k_xx.sum() - np.trace(k_xx)) / (m * (m - 1))
    within_y = (k_yy.sum() - np.trace(k_yy)) / (n * (n - 1))
    return float(within_x + within_y - 2.0 * k_xy.mean())


def kernel_inception_distance(
    features_a: np.ndarray,
    features_b: np.ndarray,
    *,
    subsets: int = DEFAULT_SUBSETS,
    subset_size: int = DEFAULT_SUBSET_SIZE,
    seed: int = 0,
) -> KidResult:
    """KID between two feature sets: MMD²ᵤ on `subsets` random subsets of min(subset_size, N, M) rows each."""
    features_a = np.asarray(features_a, dtype=np.float64)
    features_b = np.asarray(features_b, dtype=np.float64)
    size = min(subset_size, len(features_a), len(features_b))
    if size < 2:
        raise InsufficientSamplesError(
            f"KID needs at least 2 samples per set, got {len(features_a)} and {len(features_b)}"
        )
    rng = np.random.default_rng(seed)
    values = np.empty(subsets)
    for s in range(subsets):
        a = features_a[rng.choice(len(features_a), size, replace=False)]
        b = features_b[rng.choice(len(features_b), size, replace=False)]
        values[s] = mmd2_unbiased(a, b)
    return KidResult(mean=float(values.mean()), std=float(values.std()))
