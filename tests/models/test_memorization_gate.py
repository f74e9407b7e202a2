"""The memorization gate's index: a generator that replays training images is caught; the shipped one is not."""

from __future__ import annotations

import hashlib
import io
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image as PILImage

from db.engine import make_engine, make_session_factory
from db.storage import LocalStore, open_store
from models.evaluator import default_evaluator, embed
from models.inference import load_generator
from models.memorization_index import (
    GATE_QUANTILE,
    INDEX_FILE_NAME,
    METRICS_KEY,
    MemorizationIndex,
    build_index,
    closest_pairs_png,
    near_copy_rate,
    store_index_for_training,
)
from models.sampling import latents_for

Split = tuple[np.ndarray, np.ndarray]


class Memorizer:
    """A "generator" that returns training images: what the gate must catch."""

    def __init__(self, train_images: np.ndarray) -> None:
        self.train_images = train_images

    def generate(self, class_indices: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        """Training image number (latent sum hashed) for each request, as uint8 (B, 28, 28, 1)."""
        picks = (latents.abs().sum(dim=1) * 1000).long() % len(self.train_images)
        return torch.from_numpy(self.train_images[picks.numpy()])[..., None]


@pytest.fixture(scope="module")
def train_subset(fashion_train: Split) -> np.ndarray:
    """5,000 training images (every 12th): enough to index on a CPU in a test."""
    return fashion_train[0][::12]


@pytest.fixture(scope="module")
def small_index(train_subset: np.ndarray, fashion_test: Split) -> MemorizationIndex:
    """An index of the training subset, calibrated on 2,000 real test images."""
    evaluator = default_evaluator()
    return build_index(embed(evaluator, train_subset)[0], embed(evaluator, fashion_test[0][:2000])[0])


def test_a_memorizer_is_caught_and_real_unseen_images_are_not(
    small_index: MemorizationIndex, train_subset: np.ndarray, fashion_test: Split
) -> None:
    # Given a generator that returns training images
    memorizer = Memorizer(train_subset)
    latents = latents_for(3, range(200), 64)
    copies = memorizer.generate(torch.zeros(200, dtype=torch.long), latents).numpy()
    # When its images and unseen real test images are checked against the index
    evaluator = default_evaluator()
    memorizer_rate = near_copy_rate(small_index, embed(evaluator, copies)[0])
    real_rate = near_copy_rate(small_index, embed(evaluator, fashion_test[0][5000:7000])[0])
    # Then every memorized image is a near copy, and fresh real images almost never are
    assert memorizer_rate == 1.0
    assert real_rate < 0.01
    # And the index survives a round trip through its stored bytes
    restored = MemorizationIndex.from_bytes(small_index.to_bytes())
    assert restored.threshold == small_index.threshold and restored.quantile == GATE_QUANTILE
    assert np.array_equal(restored.train_features, small_index.train_features)


def test_the_closest_pairs_png_puts_each_generated_image_over_its_nearest_training_image(
    small_index: MemorizationIndex, train_subset: np.ndarray
) -> None:
    # Given 20 replayed training images
    copies = train_subset[100:120]
    features = embed(default_evaluator(), copies)[0]
    # When the closest-pairs sheet is drawn for 8 pairs
    png = closest_pairs_png(copies, train_subset, small_index, features, pairs=8)
    # Then it is a 2-row PNG, and each top tile equals the bottom tile (an exact copy)
    sheet = np.asarray(PILImage.open(io.BytesIO(png)))
    top, bottom = np.split(sheet, 2, axis=0)
    assert sheet.shape[1] == 4 * sheet.shape[0] and np.array_equal(top, bottom)


@pytest.mark.slow
def test_the_shipped_model_is_registered_with_its_full_index_and_a_near_copy_rate_below_one_percent(
    sqlite_url: str, local_store: LocalStore, fashion_test: Split
) -> None:
    # Given a fresh registry, When the default model is registered as `catalogan generate` does it
    from models.default_model import ensure_default_model, shipped_checkpoint_bytes
    from workers.memorization import load_memorization_index

    engine = make_engine(sqlite_url)
    messages: list[str] = []
    started = time.monotonic()
    row = ensure_default_model(make_session_factory(engine), local_store, notify=messages.append)
    seconds = time.monotonic() - started
    engine.dispose()
    # Then its row records the index of all 60,000 training images, calibrated on the 10,000 test images
    entry = row.metrics[METRICS_KEY]
    index = load_memorization_index(local_store, row)  # as a worker loads it: sha256-checked
    assert entry["train_images"] == len(index.train_features) == 60_000 and entry["quantile"] == GATE_QUANTILE
    size_mb = (
        sum(info.size_bytes for info in local_store.list("models/fashion-cgan/shipped/memorization-index-"))
        / 1e6
    )
    # When the shipped fashion-cgan draws 2,000 images (200 per category)
    generator = load_generator(shipped_checkpoint_bytes()[0])
    classes = torch.arange(10).repeat_interleave(200)
    images = generator.generate(classes, latents_for(2026, range(2000), generator.z_dim)).numpy()
    rate = near_copy_rate(index, embed(default_evaluator(), images)[0])
    # Then fewer than 1 % are near copies of a training image (the figures are in docs/evaluation.md)
    print(
        f"shipped fashion-cgan near-copy rate: {rate:.4f} (threshold {index.threshold:.4f}); "
        f"registration with the index took {seconds:.0f} s, index object {size_mb:.1f} MB; {messages}"
    )
    assert rate < 0.01


def test_the_training_hook_stores_an_index_next_to_the_generator(tmp_path: Path) -> None:
    # Given an image folder of 2 categories x 40 images and a local object store
    rng = np.random.default_rng(1)
    for category in ("shirt", "shoe"):
        (tmp_path / "data" / category).mkdir(parents=True)
        for number in range(40):
            pixels = np.repeat(np.repeat(rng.integers(0, 256, (7, 7), dtype=np.uint8), 4, 0), 4, 1)
            PILImage.fromarray(pixels, mode="L").save(tmp_path / "data" / category / f"{number}.png")
    store = open_store((tmp_path / "objects").as_uri())
    # When the end-of-training hook indexes it for a generator stored under models/x/run/
    entry = store_index_for_training(store, "models/x/run/generator.pt", str(tmp_path / "data"), 32, 1)
    # Then the index sits next to the generator, with every 20th image held out for the calibration
    data = store.get(f"models/x/run/{INDEX_FILE_NAME}")
    index = MemorizationIndex.from_bytes(data)
    assert entry["uri"] == store.uri(f"models/x/run/{INDEX_FILE_NAME}") and entry["train_images"] == 76
    assert entry["sha256"] == hashlib.sha256(data).hexdigest() and index.threshold == entry["threshold"] > 0


def test_the_evaluation_report_gives_the_near_copy_rate_and_the_closest_pairs_png(
    train_subset: np.ndarray, fashion_train: Split, tmp_path: Path
) -> None:
    # Given 200 images that are training images (a memorizer's output) with their labels
    from models.evaluation import evaluate_images

    copies, labels = train_subset[:200], fashion_train[1][::12][:200]
    evaluator = default_evaluator()
    # When they are evaluated with the training set's features and images
    report = evaluate_images(
        copies,
        labels,
        source="memorizer",
        samples_per_class=20,
        cas_config=None,
        train_features=embed(evaluator, train_subset)[0],
        train_images=train_subset,
        closest_pairs_path=tmp_path / "closest-pairs.png",
    )
    # Then the report flags every image as a near copy and points at the closest-pairs sheet
    assert report.near_copy_rate == 1.0
    assert report.closest_pairs_png == str(tmp_path / "closest-pairs.png")
    assert PILImage.open(tmp_path / "closest-pairs.png").format == "PNG"
    assert report.to_dict()["near_copy_rate"] == 1.0
