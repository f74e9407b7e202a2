"""Turning (seed, indices, category[, redraws]) into uint8 pixels: the one forward pass every image goes through.

The chunk worker, the quality gate's redraws, previews and `catalogan verify --regenerate` all call
`render_pixels`, so a regenerated image is computed exactly as the delivered one was (same latents, same
class tensor, same inference spec). The generator computes in fixed, padded compute batches
(`models.inference`), so how many indices one call renders never changes their pixels.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from models.latent_control import render_latents
from workers.generator_cache import GeneratorLike


def render_pixels(
    generator: GeneratorLike,
    seed: int,
    class_index: int | Sequence[int],
    indices: Sequence[int],
    *,
    redraws: Sequence[int] | None = None,
    control: Mapping[str, Any] | None = None,
) -> np.ndarray:
    """uint8 pixels (B, H, W, C) for these image indices, each from (seed, index, redraw), its category and
    the job's latent recipe `control` (`db.latent_control`; None = plain latents).

    `class_index` is one category for every index, or one per index (a chunk that packs several small items):
    each row of the generator depends on its own class and latent only, so mixing categories in one call
    never changes an image's pixels."""
    latents = render_latents(control, seed, indices, generator.z_dim, redraws)  # (B, z_dim)
    if isinstance(class_index, int):
        classes = torch.full((len(indices),), class_index, dtype=torch.long)  # (B,)
    else:
        if len(class_index) != len(indices):
            raise ValueError(f"{len(class_index)} class indices for {len(indices)} images")
        classes = torch.tensor(list(class_index), dtype=torch.long)  # (B,)
    with torch.inference_mode():
        pixels = generator.generate(classes, latents)  # (B, H, W, C) uint8
    return pixels.numpy() if isinstance(pixels, torch.Tensor) else np.asarray(pixels)


def inference_fields(generator: GeneratorLike) -> tuple[tuple[str, str], ...]:
    """The generator's inference spec as provenance fields (`Provenance.inference`); () when it has none."""
    spec = getattr(generator, "spec", None)  # test doubles of a generator carry none
    return tuple(spec.to_fields().items()) if spec is not None else ()
