"""The seed article's unconditional Keras DCGAN, ported to PyTorch with the smallest fixes that make it run.

As written it cannot run: its generator's first transposed conv has stride 1 (so it ends at 14×14 while the
discriminator expects 28×28). Fixed here: stride 2 on both transposed convs (7 → 14 → 28), the output padded
by background (-1) to the pipeline's 32 px; the sigmoid moves into the loss (BCE with logits is the same
function, numerically safer). Class indices are accepted and ignored: it is unconditional. It is kept as the
baseline preset `seed-dcgan`, not as a design to follow (it mode-collapses on Fashion-MNIST).
"""

from __future__ import annotations

import torch
from torch import nn

from models.config import ModelConfig

SEED_SIZE_PX = 28
SEED_DROPOUT = 0.3
SEED_LEAKY_SLOPE = 0.01


class SeedGenerator(nn.Module):
    """Dense(z → 2w·7·7) ReLU → ConvT 5×5 s2 (w) ReLU → ConvT 5×5 s2 (C) tanh → pad to the resolution."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if config.resolution < SEED_SIZE_PX:
            raise ValueError(
                f"seed-dcgan makes {SEED_SIZE_PX} px images; resolution {config.resolution} is smaller"
            )
        self.config = config
        width = config.g_width
        self.linear = nn.Linear(config.z_dim, 2 * width * 7 * 7)
        self.up1 = nn.ConvTranspose2d(2 * width, width, 5, stride=2, padding=2, output_padding=1)
        self.up2 = nn.ConvTranspose2d(width, config.channels, 5, stride=2, padding=2, output_padding=1)
        self._width = width

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """z (B, z_dim); y ignored → (B, C, R, R) in [-1, 1]."""
        del y  # unconditional
        x = torch.relu(self.linear(z)).view(z.shape[0], 2 * self._width, 7, 7)  # (B, 2w, 7, 7)
        x = torch.relu(self.up1(x))  # (B, w, 14, 14)
        x = torch.tanh(self.up2(x))  # (B, C, 28, 28)
        pad = (self.config.resolution - SEED_SIZE_PX) // 2
        extra = self.config.resolution - SEED_SIZE_PX - pad
        return nn.functional.pad(x, (pad, extra, pad, extra), value=-1.0)  # (B, C, R, R)


class SeedDiscriminator(nn.Module):
    """Conv 3×3 s2 (w) LeakyReLU(0.01) Dropout(0.3) → Conv 3×3 s2 (2w) LeakyReLU Dropout → Dense(1) logit."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        width = config.d_width
        self.conv1 = nn.Conv2d(config.channels, width, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, stride=2, padding=1)
        self.dropout = nn.Dropout(SEED_DROPOUT)
        side = (config.resolution + 3) // 4
        self.linear = nn.Linear(2 * width * side * side, 1)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """x (B, C, R, R); y ignored → logits (B,)."""
        del y
        h = self.dropout(nn.functional.leaky_relu(self.conv1(x), SEED_LEAKY_SLOPE))  # (B, w, R/2, R/2)
        h = self.dropout(nn.functional.leaky_relu(self.conv2(h), SEED_LEAKY_SLOPE))  # (B, 2w, R/4, R/4)
        return self.linear(h.flatten(1)).squeeze(1)
