"""The class-conditional generator: a DCGAN-style upsampling stack with conditional batch norm.

z (B, z_dim) [+ a learned class embedding] → linear → (B, 2^n·w, 4, 4) → n blocks of
[conditional BN → ReLU → nearest ×2 → conv3×3] → BN → ReLU → conv3×3 → tanh → (B, C, R, R),
with n = log2(R / 4) and w = `g_width`. Conditional batch norm (a per-class gain and bias after a plain
batch norm, as in Miyato & Koyama 2018 / BigGAN) is how the category steers every resolution.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from models.config import ModelConfig


class ConditionalBatchNorm2d(nn.Module):
    """Batch norm without its own affine, followed by a gain and bias looked up per class."""

    def __init__(self, num_features: int, num_classes: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(num_features, affine=False)
        self.gain = nn.Embedding(num_classes, num_features)
        self.bias = nn.Embedding(num_classes, num_features)
        nn.init.ones_(self.gain.weight)
        nn.init.zeros_(self.bias.weight)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """x (B, C, H, W), y (B,) class indices → (B, C, H, W)."""
        gain = self.gain(y)[:, :, None, None]  # (B, C, 1, 1)
        bias = self.bias(y)[:, :, None, None]
        return self.norm(x) * gain + bias


class UpBlock(nn.Module):
    """Conditional BN → ReLU → nearest-neighbour ×2 → conv3×3: doubles the resolution."""

    def __init__(self, c_in: int, c_out: int, num_classes: int) -> None:
        super().__init__()
        self.norm = ConditionalBatchNorm2d(c_in, num_classes)
        self.conv = nn.Conv2d(c_in, c_out, 3, padding=1)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """(B, c_in, H, W) → (B, c_out, 2H, 2W)."""
        x = torch.relu(self.norm(x, y))
        x = nn.functional.interpolate(x, scale_factor=2.0, mode="nearest")
        return self.conv(x)


class ConditionalGenerator(nn.Module):
    """Maps (z, class index) to an image in [-1, 1] of shape (B, channels, resolution, resolution)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if config.resolution < 8 or 2 ** round(math.log2(config.resolution)) != config.resolution:
            raise ValueError(f"resolution must be a power of two ≥ 8, got {config.resolution}")
        self.config = config
        n_blocks = int(math.log2(config.resolution // 4))
        widths = [config.g_width * 2 ** (n_blocks - i) for i in range(n_blocks + 1)]  # 4×4 first … R×R last
        self.embedding = nn.Embedding(config.num_classes, config.embed_dim) if config.embed_dim else None
        self.linear = nn.Linear(config.z_dim + config.embed_dim, widths[0] * 4 * 4)
        self.blocks = nn.ModuleList(
            UpBlock(widths[i], widths[i + 1], config.num_classes) for i in range(n_blocks)
        )
        self.out_norm = nn.BatchNorm2d(widths[-1])
        self.out_conv = nn.Conv2d(widths[-1], config.channels, 3, padding=1)
        self._width0 = widths[0]

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """z (B, z_dim), y (B,) int64 → images (B, C, R, R) in [-1, 1]."""
        if self.embedding is not None:
            z = torch.cat([z, self.embedding(y)], dim=1)  # (B, z_dim + embed_dim)
        x = self.linear(z).view(z.shape[0], self._width0, 4, 4)  # (B, W0, 4, 4)
        for block in self.blocks:
            x = block(x, y)
        x = torch.relu(self.out_norm(x))
        return torch.tanh(self.out_conv(x))  # (B, C, R, R)
