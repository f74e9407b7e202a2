"""The projection discriminator (Miyato & Koyama 2018) with spectral norm on every layer.

x (B, C, R, R) → conv3×3 → n × [LeakyReLU → conv4×4 stride 2] (widths doubling) down to 4×4 →
LeakyReLU → sum over space → h (B, F); the score is linear(h) + <embed(y), h>: the class enters as an
inner product with the features ("projection") instead of being concatenated to the input.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from models.config import ModelConfig

LEAKY_SLOPE = 0.1


class ProjectionDiscriminator(nn.Module):
    """Scores (image, class) pairs: higher means more real. Returns raw scores of shape (B,)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if config.resolution < 8 or 2 ** round(math.log2(config.resolution)) != config.resolution:
            raise ValueError(f"resolution must be a power of two ≥ 8, got {config.resolution}")
        self.config = config
        sn = spectral_norm if config.spectral_norm else (lambda m: m)
        n_down = int(math.log2(config.resolution // 4))
        widths = [config.d_width * 2**i for i in range(n_down + 1)]  # R×R first … 4×4 last
        self.stem = sn(nn.Conv2d(config.channels, widths[0], 3, padding=1))
        self.downs = nn.ModuleList(
            sn(nn.Conv2d(widths[i], widths[i + 1], 4, stride=2, padding=1)) for i in range(n_down)
        )
        self.linear = sn(nn.Linear(widths[-1], 1))
        self.embed = sn(nn.Embedding(config.num_classes, widths[-1]))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """x (B, C, R, R) in [-1, 1], y (B,) int64 → scores (B,)."""
        h = self.stem(x)
        for down in self.downs:
            h = down(nn.functional.leaky_relu(h, LEAKY_SLOPE))  # halves H and W
        h = nn.functional.leaky_relu(h, LEAKY_SLOPE).sum(dim=(2, 3))  # (B, F)
        projection = (self.embed(y) * h).sum(dim=1)  # (B,)
        return self.linear(h).squeeze(1) + projection
