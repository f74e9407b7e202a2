"""The evaluator CNN: input conversion, training, weights with a verified sha256, the shipped accuracy."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from models.errors import EvaluatorWeightsError
from models.evaluator import (
    DEFAULT_WEIGHTS_PATH,
    EvaluatorCNN,
    EvaluatorTrainingConfig,
    default_evaluator,
    embed,
    evaluate_accuracy,
    load_evaluator,
    save_evaluator,
    sha256_path_for,
    to_evaluator_input,
    train_evaluator,
)

SMALL = EvaluatorTrainingConfig(epochs=1, batch_size=64)


def test_input_maps_uint8_to_minus_one_one_and_pads_28_to_32_with_background() -> None:
    """Given 28×28 white images, the input is 32×32 with a 2-px border of -1 (background) and 1 inside."""
    x = to_evaluator_input(np.full((2, 28, 28), 255, dtype=np.uint8))
    assert x.shape == (2, 1, 32, 32)
    assert torch.all(x[:, :, 2:30, 2:30] == 1.0)
    assert torch.all(x[:, :, :2] == -1.0) and torch.all(x[:, :, :, 30:] == -1.0)


def test_input_accepts_generator_output_layouts() -> None:
    """Given (B, 32, 32, 1) grayscale and (B, 32, 32, 3) RGB uint8 tensors, both become (B, 1, 32, 32)."""
    gray = torch.zeros(3, 32, 32, 1, dtype=torch.uint8)
    rgb = torch.full((3, 32, 32, 3), 255, dtype=torch.uint8)
    assert torch.all(to_evaluator_input(gray) == -1.0)
    assert to_evaluator_input(rgb) == pytest.approx(torch.ones(3, 1, 32, 32))


def test_input_refuses_float_images() -> None:
    """Given float images (a caller forgot to quantise), the conversion refuses instead of mis-scaling."""
    with pytest.raises(ValueError, match="uint8"):
        to_evaluator_input(np.zeros((1, 28, 28), dtype=np.float32))


def test_embedding_is_128_dimensional_and_logits_cover_10_classes() -> None:
    """Given any model and 5 images, features are (5, 128) and logits (5, 10)."""
    features, logits = embed(EvaluatorCNN(), np.zeros((5, 28, 28), dtype=np.uint8))
    assert features.shape == (5, 128)
    assert logits.shape == (5, 10)


def test_training_on_a_small_subset_beats_chance_and_is_deterministic(
    fashion_train: tuple[np.ndarray, np.ndarray], fashion_test: tuple[np.ndarray, np.ndarray]
) -> None:
    """Given 1500 train images and one epoch, test accuracy is far above 10%, and the same seed repeats it."""
    images, labels = fashion_train
    test_images, test_labels = fashion_test
    epochs: list[int] = []
    first = train_evaluator(
        images[:1500],
        labels[:1500],
        test_images[:500],
        test_labels[:500],
        SMALL,
        on_epoch=lambda e, *_: epochs.append(e),
    )
    second = train_evaluator(images[:1500], labels[:1500], test_images[:500], test_labels[:500], SMALL)
    assert first.test_accuracy > 0.5
    assert epochs == [1]
    assert len(first.seconds_per_epoch) == 1
    for (name, a), b in zip(
        first.model.state_dict().items(), second.model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name


def test_saved_weights_load_back_only_with_their_sha256(tmp_path: Path) -> None:
    """Given saved weights, they load and embed identically; a tampered file is refused with a clear error."""
    model = EvaluatorCNN().eval()
    path = tmp_path / "evaluator.pt"
    digest = save_evaluator(model, path)
    assert sha256_path_for(path).read_text().split() == [digest, "evaluator.pt"]
    images = np.random.default_rng(0).integers(0, 256, (4, 28, 28), dtype=np.uint8)
    assert np.array_equal(embed(load_evaluator(path), images)[0], embed(model, images)[0])

    path.write_bytes(path.read_bytes() + b"\0")
    with pytest.raises(EvaluatorWeightsError, match="does not match the recorded"):
        load_evaluator(path)
    with pytest.raises(EvaluatorWeightsError, match="cannot read evaluator weights"):
        load_evaluator(tmp_path / "missing.pt")


def test_shipped_weights_match_their_recorded_sha256() -> None:
    """Given the repository's evaluator weights, the sha256 file matches them and they load."""
    assert DEFAULT_WEIGHTS_PATH.exists(), "run `catalogan evaluator train` to create the shipped weights"
    assert isinstance(default_evaluator(), EvaluatorCNN)


@pytest.mark.slow
def test_shipped_evaluator_reaches_93_percent_on_fashion_mnist_test(
    fashion_test: tuple[np.ndarray, np.ndarray],
) -> None:
    """Given the shipped weights, accuracy on all 10,000 Fashion-MNIST test images is at least 93%."""
    images, labels = fashion_test
    assert evaluate_accuracy(default_evaluator(), images, labels) >= 0.93


def test_training_config_defaults_are_the_shipped_recipe() -> None:
    """Given the default config, it is the recipe models/weights/README.md records (15 epochs, seed 0)."""
    config = EvaluatorTrainingConfig()
    assert (config.epochs, config.seed, config.batch_size) == (15, 0, 128)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.epochs = 3  # type: ignore[misc]
