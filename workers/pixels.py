"""Turning (seed, indices, category[, redraws]) into uint8 pixels: the one forward pass every image goes through.

The chunk worker and `catalogan verify --regenerate` both call `render_pixels`, so a regenerated image is
computed exactly as the delivered one was (same latents, same class tensor, same inference mode).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from models.sampling import latents_for
from workers.generator_cache import GeneratorLike


def render_pixels(
    generator: GeneratorLike,
    seed: int,
    class_index: int,
    indices: Sequence[int],
    *,
    redraws: Sequence[int] | None = None,
) -> np.ndarray:
    """uint8 pixels (B, H, W, C) for these image indices of one category, each from (seed, index, redraw)."""
    latents = latents_for(seed, indices, generator.z_dim, redraws=redraws)  # (B, z_dim)
    classes = torch.full((len(indices),), class_index, dtype=torch.long)  # (B,)
    with torch.inference_mode():
        pixels = generator.generate(classes, latents)  # (B, H, W, C) uint8
    return pixels.numpy() if isinstance(pixels, torch.Tensor) else np.asarray(pixels)
