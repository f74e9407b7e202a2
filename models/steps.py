"""One discriminator step and one generator step: plain functions, usable on CPU without Ray.

Every random draw of a step (latents, fake classes, augmentation) comes from a `torch.Generator` the
caller seeds, so a step is a pure function of (weights, optimiser state, real batch, seed): that is what
makes `--resume` exact and lets two ranks draw different but reproducible noise.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from models.config import ModelConfig, TrainConfig
from models.diffaugment import diff_augment
from models.losses import d_loss_for, g_loss_for


@dataclass(frozen=True)
class StepNoise:
    """The random inputs of one training step for one rank."""

    z_d: torch.Tensor  # (B, z_dim) latents for the discriminator step's fakes
    y_d: torch.Tensor  # (B,) their classes
    z_g: torch.Tensor  # (B, z_dim) latents for the generator step
    y_g: torch.Tensor  # (B,)
    augment: torch.Generator  # drives DiffAugment


def draw_noise(
    model: ModelConfig, batch_size: int, generator: torch.Generator, device: torch.device
) -> StepNoise:
    """Latents and uniformly random classes for one step, drawn from `generator` on the CPU."""
    z_d = torch.randn(batch_size, model.z_dim, generator=generator)
    y_d = torch.randint(0, model.num_classes, (batch_size,), generator=generator)
    z_g = torch.randn(batch_size, model.z_dim, generator=generator)
    y_g = torch.randint(0, model.num_classes, (batch_size,), generator=generator)
    augment = torch.Generator().manual_seed(int(torch.randint(0, 2**62, (1,), generator=generator)))
    return StepNoise(z_d.to(device), y_d.to(device), z_g.to(device), y_g.to(device), augment)


def discriminator_step(
    generator: nn.Module,
    discriminator: nn.Module,
    optimizer_d: torch.optim.Optimizer,
    real: torch.Tensor,
    labels: torch.Tensor,
    noise: StepNoise,
    train: TrainConfig,
) -> float:
    """One D update on a real batch (B, C, H, W) in [-1, 1] with labels (B,) and fresh fakes; returns L_D."""
    with torch.no_grad():
        fake = generator(noise.z_d, noise.y_d)  # (B, C, H, W); no graph into G
    # Real and fake go through D in one forward so DDP sees one forward per backward.
    images = diff_augment(torch.cat([real, fake]), train.diffaugment, noise.augment)  # (2B, C, H, W)
    scores = discriminator(images, torch.cat([labels, noise.y_d]))  # (2B,)
    real_scores, fake_scores = scores.split([real.shape[0], fake.shape[0]])
    loss = d_loss_for(train.loss)(real_scores, fake_scores)
    optimizer_d.zero_grad(set_to_none=True)
    loss.backward()
    optimizer_d.step()
    return float(loss.detach())


def generator_step(
    generator: nn.Module,
    discriminator: nn.Module,
    optimizer_g: torch.optim.Optimizer,
    noise: StepNoise,
    train: TrainConfig,
) -> float:
    """One G update through D (pass D's bare module under DDP); returns L_G.

    D's parameters are frozen for the step: the loss still flows through D to G, but D's weight gradients,
    which the G step would throw away, are never computed (the next D step starts from zeroed gradients
    either way, so the result is the same bit for bit).
    """
    parameters = [p for p in discriminator.parameters() if p.requires_grad]
    for parameter in parameters:
        parameter.requires_grad_(False)
    try:
        fake = generator(noise.z_g, noise.y_g)  # (B, C, H, W)
        scores = discriminator(diff_augment(fake, train.diffaugment, noise.augment), noise.y_g)  # (B,)
        loss = g_loss_for(train.loss)(scores)
        optimizer_g.zero_grad(set_to_none=True)
        loss.backward()
        optimizer_g.step()
    finally:
        for parameter in parameters:
            parameter.requires_grad_(True)
    return float(loss.detach())


def generator_loss(
    generator: nn.Module, discriminator: nn.Module, noise: StepNoise, train: TrainConfig
) -> float:
    """L_G on the step's latents with no update and no graph (what a D warm-up step records).

    D's forward is the one `generator_step` makes, so D's spectral-norm power iteration advances as it
    would have; G's weights are untouched.
    """
    with torch.no_grad():
        fake = generator(noise.z_g, noise.y_g)  # (B, C, H, W)
        scores = discriminator(diff_augment(fake, train.diffaugment, noise.augment), noise.y_g)  # (B,)
        return float(g_loss_for(train.loss)(scores))


def make_optimizers(
    generator: nn.Module, discriminator: nn.Module, train: TrainConfig
) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer]:
    """Adam for G and D with the two learning rates of TTUR (Heusel et al. 2017)."""
    betas = (train.beta1, train.beta2)
    optimizer_g = torch.optim.Adam(generator.parameters(), lr=train.lr_g, betas=betas)
    optimizer_d = torch.optim.Adam(discriminator.parameters(), lr=train.lr_d, betas=betas)
    return optimizer_g, optimizer_d
