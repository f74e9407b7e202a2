"""Build the generator and discriminator a `ModelConfig` describes."""

from __future__ import annotations

from torch import nn

from models.config import ModelConfig
from models.dcgan_seed import SeedDiscriminator, SeedGenerator
from models.discriminator_projection import ProjectionDiscriminator
from models.errors import ModelError
from models.generator_cgan import ConditionalGenerator


def build_generator(config: ModelConfig) -> nn.Module:
    """A freshly initialised generator: `forward(z (B, z_dim), y (B,)) -> images (B, C, R, R)` in [-1, 1]."""
    if config.architecture == "cgan":
        return ConditionalGenerator(config)
    if config.architecture == "dcgan-seed":
        return SeedGenerator(config)
    raise ModelError(f"unknown architecture {config.architecture!r}")


def build_discriminator(config: ModelConfig) -> nn.Module:
    """A freshly initialised discriminator: `forward(x (B, C, R, R), y (B,)) -> scores (B,)`."""
    if config.architecture == "cgan":
        return ProjectionDiscriminator(config)
    if config.architecture == "dcgan-seed":
        return SeedDiscriminator(config)
    raise ModelError(f"unknown architecture {config.architecture!r}")
