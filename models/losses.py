"""GAN losses as pure functions of discriminator scores (raw, pre-sigmoid).

hinge (Lim & Ye 2017; used by SN-GAN, BigGAN):
    L_D = E[max(0, 1 - D(x))] + E[max(0, 1 + D(G(z)))],   L_G = -E[D(G(z))]
non-saturating (Goodfellow et al. 2014, the seed article's BCE):
    L_D = E[softplus(-D(x))] + E[softplus(D(G(z)))],       L_G = E[softplus(-D(G(z)))]
softplus(-s) = -log sigmoid(s) is BCE with target 1, computed without overflow.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from models.config import LossName


def hinge_d_loss(real_scores: torch.Tensor, fake_scores: torch.Tensor) -> torch.Tensor:
    """Discriminator hinge loss: push real scores above +1 and fake scores below -1."""
    return F.relu(1.0 - real_scores).mean() + F.relu(1.0 + fake_scores).mean()


def hinge_g_loss(fake_scores: torch.Tensor) -> torch.Tensor:
    """Generator hinge loss: raise the discriminator's score of fakes."""
    return -fake_scores.mean()


def non_saturating_d_loss(real_scores: torch.Tensor, fake_scores: torch.Tensor) -> torch.Tensor:
    """Discriminator BCE: real → 1, fake → 0."""
    return F.softplus(-real_scores).mean() + F.softplus(fake_scores).mean()


def non_saturating_g_loss(fake_scores: torch.Tensor) -> torch.Tensor:
    """Generator non-saturating BCE: fakes → 1 (strong gradients while D wins)."""
    return F.softplus(-fake_scores).mean()


D_LOSSES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "hinge": hinge_d_loss,
    "non-saturating": non_saturating_d_loss,
}
G_LOSSES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "hinge": hinge_g_loss,
    "non-saturating": non_saturating_g_loss,
}


def d_loss_for(name: LossName) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The discriminator loss function called `name`."""
    return D_LOSSES[name]


def g_loss_for(name: LossName) -> Callable[[torch.Tensor], torch.Tensor]:
    """The generator loss function called `name`."""
    return G_LOSSES[name]
