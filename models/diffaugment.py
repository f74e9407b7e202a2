"""DiffAugment (Zhao et al. 2020): differentiable translation and cutout applied to real AND fake images.

Both real and generated batches go through the same random augmentation family before the discriminator,
so D cannot memorise a small data set while G still receives gradients through the augmentation.
Randomness comes from an explicit `torch.Generator` so a training step is a pure function of its seed.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

TRANSLATION_RATIO = 0.125  # max shift, as a fraction of the image side
CUTOUT_RATIO = 0.5  # side of the cut square, as a fraction of the image side


def translate(x: torch.Tensor, generator: torch.Generator, ratio: float = TRANSLATION_RATIO) -> torch.Tensor:
    """Shift each image by up to ±ratio·side pixels in x and y, filling with the background (-1)."""
    batch, _, height, width = x.shape
    max_dy, max_dx = int(height * ratio + 0.5), int(width * ratio + 0.5)
    dy = torch.randint(-max_dy, max_dy + 1, (batch,), generator=generator).to(x.device)
    dx = torch.randint(-max_dx, max_dx + 1, (batch,), generator=generator).to(x.device)
    padded = F.pad(x, (max_dx, max_dx, max_dy, max_dy), value=-1.0)  # (B, C, H + 2dy, W + 2dx)
    rows = torch.arange(height, device=x.device)[None, :] + max_dy - dy[:, None]  # (B, H)
    cols = torch.arange(width, device=x.device)[None, :] + max_dx - dx[:, None]  # (B, W)
    index = torch.arange(batch, device=x.device)[:, None, None]
    # Gather per image: (B, H, W, C) → back to (B, C, H, W); indexing keeps it differentiable.
    return padded.permute(0, 2, 3, 1)[index, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


def cutout(x: torch.Tensor, generator: torch.Generator, ratio: float = CUTOUT_RATIO) -> torch.Tensor:
    """Set one random square of side ratio·side to the background (-1) in each image."""
    batch, _, height, width = x.shape
    cut_h, cut_w = int(height * ratio + 0.5), int(width * ratio + 0.5)
    top = torch.randint(0, height - cut_h + 1, (batch,), generator=generator).to(x.device)
    left = torch.randint(0, width - cut_w + 1, (batch,), generator=generator).to(x.device)
    rows = torch.arange(height, device=x.device)[None, :]
    cols = torch.arange(width, device=x.device)[None, :]
    inside_rows = (rows >= top[:, None]) & (rows < top[:, None] + cut_h)  # (B, H)
    inside_cols = (cols >= left[:, None]) & (cols < left[:, None] + cut_w)  # (B, W)
    mask = (inside_rows[:, :, None] & inside_cols[:, None, :])[:, None]  # (B, 1, H, W)
    return torch.where(mask, torch.full_like(x, -1.0), x)


def diff_augment(x: torch.Tensor, policy: Sequence[str], generator: torch.Generator) -> torch.Tensor:
    """Apply the named augmentations ("translation", "cutout") in order; an empty policy is the identity."""
    for name in policy:
        if name == "translation":
            x = translate(x, generator)
        elif name == "cutout":
            x = cutout(x, generator)
        else:
            raise ValueError(f"unknown DiffAugment policy {name!r}; use translation, cutout")
    return x
