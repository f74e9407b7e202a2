"""FID_fm: the Fréchet distance between Gaussian fits of two feature sets (Heusel et al., 2017).

    d² = ‖μ₁ − μ₂‖² + tr(Σ₁) + tr(Σ₂) − 2 tr((Σ₁ Σ₂)^½)

computed in the project evaluator's 128-d feature space ("_fm" = Fashion-MNIST evaluator, so the numbers
are not comparable with Inception FID). The trace of the matrix square root is taken from eigenvalues:
(Σ₁ Σ₂)^½ is similar to the symmetric PSD matrix Σ₁^½ Σ₂ Σ₁^½, so tr((Σ₁ Σ₂)^½) = Σᵢ √λᵢ(Σ₁^½ Σ₂ Σ₁^½).
Only symmetric eigendecompositions are used, which is stable where scipy's general `sqrtm` can return
complex noise for near-singular covariances.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from models.errors import InsufficientSamplesError


@dataclass(frozen=True)
class GaussianFit:
    """Mean (D,) and covariance (D, D) of a feature set, float64."""

    mean: np.ndarray
    covariance: np.ndarray


def fit_gaussian(features: np.ndarray) -> GaussianFit:
    """The sample mean and unbiased covariance of features (N, D); needs N ≥ 2."""
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or len(features) < 2:
        raise InsufficientSamplesError(
            f"a Gaussian fit needs features of shape (N ≥ 2, D), got {features.shape}"
        )
    return GaussianFit(mean=features.mean(axis=0), covariance=np.cov(features, rowvar=False))


def _symmetric_sqrt(matrix: np.ndarray) -> np.ndarray:
    """The PSD square root of a symmetric matrix; tiny negative eigenvalues (round-off) are clipped to 0."""
    eigenvalues, eigenvectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (eigenvectors * np.sqrt(np.clip(eigenvalues, 0.0, None))) @ eigenvectors.T


def frechet_distance(a: GaussianFit, b: GaussianFit) -> float:
    """The squared Fréchet distance between two Gaussian fits (≥ 0; 0 for identical fits)."""
    if a.mean.shape != b.mean.shape:
        raise InsufficientSamplesError(f"feature dimensions differ: {a.mean.shape} vs {b.mean.shape}")
    diff = a.mean - b.mean
    root_a = _symmetric_sqrt(a.covariance)
    inner = root_a @ b.covariance @ root_a  # symmetric PSD, same spectrum as Σa Σb
    eigenvalues = np.linalg.eigvalsh((inner + inner.T) / 2)
    trace_sqrt = float(np.sqrt(np.clip(eigenvalues, 0.0, None)).sum())
    distance = float(diff @ diff + np.trace(a.covariance) + np.trace(b.covariance) - 2.0 * trace_sqrt)
    return max(distance, 0.0)  # round-off can make identical fits come out at -1e-12


def frechet_distance_from_features(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """FID_fm between two feature sets (N, D) and (M, D)."""
    return frechet_distance(fit_gaussian(features_a), fit_gaussian(features_b))
