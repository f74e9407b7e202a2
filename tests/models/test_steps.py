"""Losses, EMA, DiffAugment and the D/G step functions, on CPU without Ray."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from models.build import build_discriminator, build_generator
from models.config import get_preset
from models.diffaugment import diff_augment
from models.ema import ema_decay_at, make_ema, update_ema
from models.losses import g_loss_for, hinge_d_loss, hinge_g_loss, non_saturating_d_loss, non_saturating_g_loss
from models.steps import discriminator_step, draw_noise, generator_step, make_optimizers

CPU = torch.device("cpu")


def test_losses_match_their_formulas() -> None:
    real, fake = torch.tensor([2.0, 0.5]), torch.tensor([-2.0, 0.0])
    assert hinge_d_loss(real, fake).item() == pytest.approx((0 + 0.5) / 2 + (0 + 1) / 2)
    assert hinge_g_loss(fake).item() == pytest.approx(1.0)
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    expected_d = bce(real, torch.ones(2)) + bce(fake, torch.zeros(2))
    assert non_saturating_d_loss(real, fake).item() == pytest.approx(expected_d.item(), rel=1e-6)
    assert non_saturating_g_loss(fake).item() == pytest.approx(bce(fake, torch.ones(2)).item(), rel=1e-6)


def test_ema_moves_towards_the_live_weights_and_copies_buffers() -> None:
    module = torch.nn.BatchNorm1d(2)
    ema = make_ema(module)
    with torch.no_grad():
        module.weight.fill_(3.0)
        module.get_buffer("running_mean").fill_(5.0)
    update_ema(ema, module, decay=0.5)
    assert torch.allclose(ema.get_parameter("weight"), torch.full((2,), 2.0))  # 0.5·1 + 0.5·3
    assert torch.equal(ema.get_buffer("running_mean"), torch.full((2,), 5.0))
    assert ema_decay_at(0, 0.999) == pytest.approx(0.1)
    assert ema_decay_at(100_000, 0.999) == 0.999
    assert ema_decay_at(5, 0.999, start_step=10) == 0.0


def test_diffaugment_keeps_shape_and_gradients_and_is_seeded() -> None:
    x = torch.rand(4, 1, 8, 8, requires_grad=True)
    out = diff_augment(x, ("translation", "cutout"), torch.Generator().manual_seed(1))
    again = diff_augment(x, ("translation", "cutout"), torch.Generator().manual_seed(1))
    assert out.shape == x.shape and torch.equal(out, again)
    out.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert torch.equal(diff_augment(x, (), torch.Generator()), x)
    with pytest.raises(ValueError, match="unknown DiffAugment"):
        diff_augment(x, ("flip",), torch.Generator())


@pytest.mark.parametrize("loss", ["hinge", "non-saturating"])
def test_step_functions_decrease_their_loss_on_a_toy_problem(loss: str) -> None:
    # Given the tiny preset, real images that are all white, and fixed noise
    preset = get_preset("tiny")
    train = dataclasses.replace(preset.train, loss=loss, lr_d=2e-3, lr_g=2e-3, diffaugment=())  # type: ignore[arg-type]
    torch.manual_seed(0)
    generator, discriminator = build_generator(preset.model), build_discriminator(preset.model)
    optimizer_g, optimizer_d = make_optimizers(generator, discriminator, train)
    real = torch.ones(16, 1, 8, 8)
    labels = torch.arange(16) % 3
    noise = draw_noise(preset.model, 16, torch.Generator().manual_seed(0), CPU)
    # When D alone trains for 40 steps, its loss falls
    d_losses = [
        discriminator_step(generator, discriminator, optimizer_d, real, labels, noise, train)
        for _ in range(40)
    ]
    assert d_losses[-1] < d_losses[0] - 0.1
    # And when G alone then trains against that D for 40 steps, its loss falls
    g_losses = [generator_step(generator, discriminator, optimizer_g, noise, train) for _ in range(40)]
    assert g_losses[-1] < g_losses[0] - 0.1


def test_every_preset_builds_networks_of_its_shape() -> None:
    for name in ("fashion-cgan", "seed-dcgan", "photo-cgan-64", "tiny"):
        model = get_preset(name).model
        generator, discriminator = build_generator(model), build_discriminator(model)
        z = torch.randn(2, model.z_dim)
        y = torch.tensor([0, 1])
        with torch.no_grad():
            images = generator(z, y)
        assert images.shape == (2, model.channels, model.resolution, model.resolution)
        assert float(images.abs().max()) <= 1.0
        with torch.no_grad():
            assert discriminator(images, y).shape == (2,)


def test_training_warns_when_a_category_collapses() -> None:
    import numpy as np

    from models.training import mode_collapse_warnings

    rng = np.random.default_rng(0)
    grid = rng.integers(0, 255, (2, 8, 32, 32, 1), dtype=np.uint8)
    grid[1] = grid[1, :1]  # every "bag" sample is the same image
    warnings = mode_collapse_warnings(grid, ("shirt", "bag"))
    assert len(warnings) == 1 and "'bag'" in warnings[0]


def test_the_generator_step_leaves_the_discriminator_untouched_and_trains_g_as_before() -> None:
    # Given two identical tiny G/D pairs and the same noise
    preset = get_preset("tiny")
    torch.manual_seed(1)
    generator, discriminator = build_generator(preset.model), build_discriminator(preset.model)
    twin_g, twin_d = build_generator(preset.model), build_discriminator(preset.model)
    twin_g.load_state_dict(generator.state_dict())
    twin_d.load_state_dict(discriminator.state_dict())
    optimizer_g = make_optimizers(generator, discriminator, preset.train)[0]
    twin_optimizer_g = make_optimizers(twin_g, twin_d, preset.train)[0]
    noise = draw_noise(preset.model, 4, torch.Generator().manual_seed(0), CPU)
    twin_noise = draw_noise(preset.model, 4, torch.Generator().manual_seed(0), CPU)
    # When one takes a G step, and the other the same step computed by hand with D's gradients on
    loss = generator_step(generator, discriminator, optimizer_g, noise, preset.train)
    fake = twin_g(twin_noise.z_g, twin_noise.y_g)
    scores = twin_d(diff_augment(fake, preset.train.diffaugment, twin_noise.augment), twin_noise.y_g)
    twin_loss = g_loss_for(preset.train.loss)(scores)
    twin_optimizer_g.zero_grad(set_to_none=True)
    twin_loss.backward()
    twin_optimizer_g.step()
    # Then G's loss and new weights are the same bit for bit
    assert loss == float(twin_loss.detach())
    for ours, theirs in zip(generator.state_dict().values(), twin_g.state_dict().values(), strict=True):
        assert torch.equal(ours, theirs)
    # And D got no weight gradients from it (they are never computed), and trains again afterwards
    assert all(p.grad is None for p in discriminator.parameters())
    assert any(p.grad is not None for p in twin_d.parameters())
    assert all(p.requires_grad for p in discriminator.parameters())
