"""Intra-class diversity as mean pairwise SSIM (Wang et al., 2004) — the mode-collapse alarm.

Within one category, a healthy generator's images differ from each other about as much as real photos
do; a collapsed one repeats an image, and the mean SSIM between random pairs climbs towards 1. SSIM
here is the classic one: an 11×11 Gaussian window (σ = 1.5), K₁ = 0.01, K₂ = 0.03, dynamic range 255,
averaged over the 'valid' window positions, on grayscale (RGB is reduced to luma first).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
import torch.nn.functional as F

from models.errors import InsufficientSamplesError

WINDOW_SIZE_PX = 11
WINDOW_SIGMA_PX = 1.5
DYNAMIC_RANGE = 255.0
K1, K2 = 0.01, 0.03
DEFAULT_MAX_PAIRS = 256  # random pairs per category: the estimate's std is ~0.01, the cost stays small


def gaussian_window(size: int = WINDOW_SIZE_PX, sigma: float = WINDOW_SIGMA_PX) -> torch.Tensor:
    """A normalized 2-D Gaussian window (size, size), float64."""
    axis = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    one_d = torch.exp(-(axis**2) / (2 * sigma**2))
    one_d = one_d / one_d.sum()
    return torch.outer(one_d, one_d)


def _grayscale(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W) or (N, H, W, C) → float64 (N, 1, H, W) in [0, 255]."""
    x = torch.from_numpy(np.array(images, dtype=np.float64))
    if x.ndim == 4 and x.shape[-1] == 3:
        x = x @ torch.tensor([0.299, 0.587, 0.114], dtype=torch.float64)  # (N, H, W)
    elif x.ndim == 4 and x.shape[-1] == 1:
        x = x[..., 0]
    if x.ndim != 3:
        raise InsufficientSamplesError(f"SSIM needs images (N, H, W[, C]), got {tuple(x.shape)}")
    if min(x.shape[1:]) < WINDOW_SIZE_PX:
        raise InsufficientSamplesError(
            f"SSIM needs images of at least {WINDOW_SIZE_PX} px, got {tuple(x.shape)}"
        )
    return x.unsqueeze(1)


def ssim_pairs(images_a: np.ndarray, images_b: np.ndarray) -> np.ndarray:
    """SSIM of each pair (images_a[i], images_b[i]), shape (N,); 1.0 for identical images."""
    x, y = _grayscale(images_a), _grayscale(images_b)
    if x.shape != y.shape:
        raise InsufficientSamplesError(
            f"SSIM pairs need equal shapes, got {tuple(x.shape)} and {tuple(y.shape)}"
        )
    # The Gaussian window is separable: two 1-D passes cost 22 multiply-adds per pixel instead of 121.
    one_d = gaussian_window()[WINDOW_SIZE_PX // 2]
    one_d = one_d / one_d.sum()
    rows = one_d.view(1, 1, 1, WINDOW_SIZE_PX)
    cols = one_d.view(1, 1, WINDOW_SIZE_PX, 1)
    stacked = torch.cat([x, y, x * x, y * y, x * y], dim=1)  # (N, 5, H, W)
    n, _, height, width = stacked.shape
    blurred = F.conv2d(F.conv2d(stacked.reshape(n * 5, 1, height, width), rows), cols)  # 'valid'
    mu_x, mu_y, xx, yy, xy = blurred.reshape(n, 5, height - WINDOW_SIZE_PX + 1, -1).unbind(dim=1)

    c1, c2 = (K1 * DYNAMIC_RANGE) ** 2, (K2 * DYNAMIC_RANGE) ** 2
    var_x = xx - mu_x**2
    var_y = yy - mu_y**2
    cov_xy = xy - mu_x * mu_y
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov_xy + c2)) / (
        (mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)
    )
    return ssim_map.mean(dim=(1, 2)).numpy()


def mean_pairwise_ssim(images: np.ndarray, *, max_pairs: int = DEFAULT_MAX_PAIRS, seed: int = 0) -> float:
    """Mean SSIM over distinct pairs of images (all pairs, or `max_pairs` random ones); needs ≥ 2 images."""
    n = len(images)
    if n < 2:
        raise InsufficientSamplesError(f"pairwise SSIM needs at least 2 images, got {n}")
    first, second = np.triu_indices(n, k=1)
    if len(first) > max_pairs:
        chosen = np.random.default_rng(seed).choice(len(first), max_pairs, replace=False)
        first, second = first[chosen], second[chosen]
    images = np.asarray(images)
    return float(ssim_pairs(images[first], images[second]).mean())


def intra_class_ssim(
    images_by_class: Mapping[str, np.ndarray], *, max_pairs: int = DEFAULT_MAX_PAIRS, seed: int = 0
) -> dict[str, float]:
    """Mean pairwise SSIM per category (categories with fewer than 2 images are left out)."""
    return {
        name: mean_pairwise_ssim(images, max_pairs=max_pairs, seed=seed)
        for name, images in images_by_class.items()
        if len(images) >= 2
    }
