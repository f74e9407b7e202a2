"""`load_generator` / `generate`: the interface generation workers rely on."""

from __future__ import annotations

import pytest
import torch

from models.checkpoint import checkpoint_to_bytes
from models.errors import CheckpointError
from models.inference import load_generator, random_generator_checkpoint
from models.sampling import latents_for


def test_generate_returns_uint8_images_of_the_configured_shape() -> None:
    # Given a random tiny generator checkpoint
    generator = load_generator(random_generator_checkpoint("tiny", seed=0))
    # When three images are generated
    latents = latents_for(7, [0, 1, 2], generator.z_dim)
    images = generator.generate(torch.tensor([0, 1, 2]), latents)
    # Then they are uint8 (B, H, W, C) on the CPU, and the metadata matches the preset
    assert images.dtype == torch.uint8
    assert images.shape == (3, generator.resolution, generator.resolution, generator.channels)
    assert images.device.type == "cpu"
    assert generator.categories == ("a", "b", "c")
    assert len(generator.checkpoint_sha256) == 64


def test_an_image_depends_on_its_latent_and_category_not_its_batch() -> None:
    # Given one generator and latents for images 0..5
    generator = load_generator(random_generator_checkpoint("tiny", seed=1))
    latents = latents_for(11, range(6), generator.z_dim)
    classes = torch.tensor([0, 1, 2, 0, 1, 2])
    # When the same images are made in one batch and in two
    whole = generator.generate(classes, latents)
    halves = torch.cat(
        [generator.generate(classes[:2], latents[:2]), generator.generate(classes[2:], latents[2:])]
    )
    # Then the pixels are identical, and a reload gives the same pixels again
    assert torch.equal(whole, halves)
    again = load_generator(random_generator_checkpoint("tiny", seed=1)).generate(classes, latents)
    assert torch.equal(whole, again)


def test_bad_inputs_are_refused() -> None:
    generator = load_generator(random_generator_checkpoint("tiny"))
    with pytest.raises(ValueError, match="class indices"):
        generator.generate(torch.tensor([5]), latents_for(0, [0], generator.z_dim))
    with pytest.raises(ValueError, match="latents"):
        generator.generate(torch.tensor([0]), torch.zeros(1, generator.z_dim + 1))


def test_unreadable_or_foreign_checkpoints_raise_checkpoint_error() -> None:
    with pytest.raises(CheckpointError, match="unreadable"):
        load_generator(b"not a checkpoint")
    payload = {"kind": "generator", "model_config": {}}
    with pytest.raises(CheckpointError, match="missing generator_ema"):
        load_generator(checkpoint_to_bytes(payload))
