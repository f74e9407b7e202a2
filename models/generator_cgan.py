"""The class-conditional generator: a DCGAN-style upsampling stack with conditional batch norm.

z (B, z_dim) [+ a learned class embedding] → linear → (B, 2^n·w, 4, 4) → n blocks of
[conditional BN → ReLU → nearest ×2 → conv3×3] → BN → ReLU → conv3×3 → tanh → (B, C, R, R),
with n = log2(R / 4) and w = `g_width`. Conditional batch norm (a per-class gain and bias after a plain
batch norm, as in Miyato & Koyama 2018 / BigGAN) is how the category steers every resolution.
"""

from __future__ import annotations

import copy
import math
from typing import cast

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


class FoldedUpBlock(nn.Module):
    """An `UpBlock` for inference whose nearest ×2 → conv3×3 is one stride-2 transposed conv 4×4: the same function.

    Output row 2i of the upsampled conv reads input rows (i-1, i, i) through taps (w₋₁, w₀, w₊₁), row 2i+1 reads
    (i, i, i+1): two distinct input rows each, with summed taps. A transposed conv (stride 2, kernel 4,
    padding 1) computes exactly that with kernel rows (w₊₁, w₀+w₊₁, w₋₁+w₀, w₋₁), and the same along columns:
    4 multiply-adds per output pixel and input channel instead of 9, and no upsampled tensor. The sums
    round differently from the unfolded conv (about 1e-5 at the output), so folded pixels are their own
    determinism key (`models.inference.InferenceSpec.graph`).
    """

    def __init__(self, block: UpBlock) -> None:
        super().__init__()
        weight = block.conv.weight.detach().double()  # (c_out, c_in, 3, 3); taps 0, 1, 2 = offsets -1, 0, +1
        bias = block.conv.bias
        if block.conv.kernel_size != (3, 3) or block.conv.padding != (1, 1) or bias is None:
            raise ValueError("only a 3×3 conv with padding 1 and a bias folds")
        kernel = _fold_taps(_fold_taps(weight).transpose(2, 3)).transpose(2, 3)  # (c_out, c_in, 4, 4)
        self.norm = block.norm
        trained = block.conv.weight
        deconv = nn.ConvTranspose2d(
            weight.shape[1],
            weight.shape[0],
            4,
            stride=2,
            padding=1,
            device=trained.device,
            dtype=trained.dtype,
        )
        with torch.no_grad():
            deconv.weight.copy_(kernel.transpose(0, 1))  # (c_in, c_out, 4, 4), summed in float64
            assert deconv.bias is not None  # a ConvTranspose2d has one unless told not to
            deconv.bias.copy_(bias.detach())
        self.deconv = deconv

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """(B, c_in, H, W) → (B, c_out, 2H, 2W), as `UpBlock.forward`."""
        return self.deconv(torch.relu(self.norm(x, y)))


def _fold_taps(weight: torch.Tensor) -> torch.Tensor:
    """Last axis: the 3 taps (offsets -1, 0, +1) of a conv after nearest ×2 → a stride-2 transposed conv's 4."""
    before, centre, after = weight[..., 0], weight[..., 1], weight[..., 2]
    return torch.stack([after, centre + after, before + centre, before], dim=-1)


def fold_upsampling(generator: ConditionalGenerator) -> ConditionalGenerator:
    """A copy of a generator with every `UpBlock` folded (`FoldedUpBlock`), in eval mode: for inference only.

    Measured on the shipped generator on a 2-core CPU: 1.7–1.8× the unfolded forward's images/s at one thread
    under ONNX Runtime and eager (docs/performance.md, "The folded graph and the gate's evaluator on ONNX
    Runtime").
    """
    folded = copy.deepcopy(generator)
    folded.blocks = nn.ModuleList(FoldedUpBlock(cast(UpBlock, block)) for block in generator.blocks)
    return folded.eval().requires_grad_(False)


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
