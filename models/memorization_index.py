"""The memorization gate's index: training-set features in evaluator space, with a calibrated copy threshold.

Built at the end of training and stored next to the generator (`memorization-index.npz`, referenced from the
model version's `metrics["memorization_index"]`). A generated image whose nearest training image (Euclidean
distance between evaluator features) is closer than `threshold` is a *near copy*. The threshold is
calibrated on real data the generator never saw: the `quantile` (0.1 %) of the nearest-train distances of
the real test images, so about 0.1 % of fresh real images would be flagged, and a generator that replays
its training images is flagged on every image (distance 0). The calibration measures those distances with
`MemorizationIndex.nearest`, the very float32 arithmetic the workers' gate uses, so "0.1 % of real test
images" holds exactly for the gate's own decisions (and it costs about half of a float64 pass).

The shipped `fashion-cgan` gets the same index when it is registered (`models.default_model`), built by
`build_fashion_mnist_index` from the locally installed Fashion-MNIST.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

GATE_QUANTILE = 0.001
INDEX_FILE_NAME = "memorization-index.npz"
METRICS_KEY = "memorization_index"


@dataclass(frozen=True)
class MemorizationIndex:
    """Training features (N, D) float32 and the near-copy threshold calibrated on held-out real data."""

    train_features: np.ndarray
    threshold: float
    quantile: float

    def nearest(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(distance, training row) of each query's nearest training image."""
        queries = np.asarray(features, dtype=np.float32)
        reference = self.train_features
        squared = (reference * reference).sum(axis=1)
        distances = np.empty(len(queries))
        rows = np.empty(len(queries), dtype=np.int64)
        for start in range(0, len(queries), 256):
            block = queries[start : start + 256]
            d2 = (block * block).sum(axis=1)[:, None] + squared[None, :] - 2.0 * block @ reference.T
            rows[start : start + 256] = d2.argmin(axis=1)
            distances[start : start + 256] = np.sqrt(np.maximum(d2.min(axis=1), 0.0))
        return distances, rows

    def near_copies(self, features: np.ndarray) -> np.ndarray:
        """True for each query closer to a training image than the threshold."""
        distances, _ = self.nearest(features)
        return np.asarray(distances < self.threshold)

    def to_bytes(self) -> bytes:
        """The index as an .npz file (no pickles)."""
        buffer = io.BytesIO()
        np.savez(
            buffer,
            train_features=self.train_features.astype(np.float32),
            threshold=np.float64(self.threshold),
            quantile=np.float64(self.quantile),
        )
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> MemorizationIndex:
        """Read an index written by `to_bytes`."""
        with np.load(io.BytesIO(data), allow_pickle=False) as archive:
            return cls(
                np.asarray(archive["train_features"], dtype=np.float32),
                float(archive["threshold"]),
                float(archive["quantile"]),
            )


def build_index(
    train_features: np.ndarray, held_out_features: np.ndarray, quantile: float = GATE_QUANTILE
) -> MemorizationIndex:
    """Index the training features; calibrate the threshold on held-out real → train distances."""
    features = np.asarray(train_features, dtype=np.float32)
    # The gate's own float32 distances (not a float64 pass): the threshold is then exactly the `quantile` of
    # what the workers would measure for these real images.
    held_out, _ = MemorizationIndex(features, 0.0, quantile).nearest(held_out_features)
    return MemorizationIndex(features, float(np.quantile(held_out, quantile)), quantile)


def build_index_from_images(
    train_images: np.ndarray, held_out_images: np.ndarray, quantile: float = GATE_QUANTILE
) -> MemorizationIndex:
    """`build_index` on uint8 images, embedded with the shipped evaluator."""
    from models.evaluator import default_evaluator, embed

    evaluator = default_evaluator()
    return build_index(embed(evaluator, train_images)[0], embed(evaluator, held_out_images)[0], quantile)


def build_fashion_mnist_index(
    root: Path | str, *, every: int = 1, quantile: float = GATE_QUANTILE
) -> MemorizationIndex:
    """Fashion-MNIST's train split indexed, calibrated on its test split, as `catalogan train` does.

    `every` > 1 keeps every n-th image of each split (a quick, smaller index for tests). Raises
    `models.errors.DataError` when the IDX files are missing or unreadable.
    """
    from models.data.fashion_mnist import load_fashion_mnist

    train = load_fashion_mnist(root, "train")[0][::every]
    held_out = load_fashion_mnist(root, "test")[0][::every]
    return build_index_from_images(train, held_out, quantile)


def put_index(store: Any, key: str, index: MemorizationIndex) -> dict[str, Any]:
    """Store the index at `key`; the model version's `metrics["memorization_index"]` entry for it."""
    payload = index.to_bytes()
    store.put(key, payload, content_type="application/octet-stream")
    return index_metrics(index, store.uri(key), payload)


def index_metrics(index: MemorizationIndex, uri: str, data: bytes) -> dict[str, Any]:
    """What a model version's `metrics["memorization_index"]` records about its stored index."""
    return {
        "uri": uri,
        "sha256": hashlib.sha256(data).hexdigest(),
        "threshold": index.threshold,
        "quantile": index.quantile,
        "train_images": len(index.train_features),
    }


def near_copy_rate(index: MemorizationIndex, features: np.ndarray) -> float:
    """Share of images (by their evaluator features) that are near copies of a training image."""
    return float(index.near_copies(features).mean()) if len(features) else 0.0


def closest_pairs_png(
    generated: np.ndarray, train: np.ndarray, index: MemorizationIndex, features: np.ndarray, pairs: int = 8
) -> bytes:
    """A PNG of the `pairs` generated images nearest the training set, each above its nearest training image.

    `generated` (N, H, W[, 1]) and `train` (M, H, W[, 1]) uint8; `features` the generated images' features.
    """
    from PIL import Image as PILImage

    from models.evaluator import canonical_images

    distances, rows = index.nearest(features)
    order = np.argsort(distances, kind="stable")[:pairs]
    top = list(canonical_images(np.asarray(generated)[order]))  # (32, 32) each, as the evaluator sees them
    bottom = list(canonical_images(np.asarray(train)[rows[order]]))
    sheet = np.concatenate([np.concatenate(top, axis=1), np.concatenate(bottom, axis=1)], axis=0)  # (2H, kW)
    scale = max(1, 112 // sheet.shape[0] * 2)
    image = PILImage.fromarray(sheet.astype(np.uint8), mode="L")
    image = image.resize((image.width * scale, image.height * scale), PILImage.Resampling.NEAREST)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()


def calibration_split(images: np.ndarray, held_out_fraction: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """(indexed, held-out) for data without a test split: every 20th image is held out for calibration."""
    step = max(2, round(1 / held_out_fraction))
    mask = np.zeros(len(images), dtype=bool)
    mask[::step] = True
    return images[~mask], images[mask]


def store_index_for_training(
    store: Any, generator_key: str, data_spec: str, resolution: int, channels: int
) -> dict[str, Any]:
    """Build the index of a run's training data, store it next to the generator; its metrics entry.

    Fashion-MNIST is calibrated on its test split; any other data on every 20th training image, held out.
    """
    from models.data.dataset import FASHION_MNIST, open_dataset
    from models.data.fashion_mnist import DEFAULT_ROOT, load_fashion_mnist

    data = open_dataset(data_spec, resolution, channels)
    train = data.images.permute(0, 2, 3, 1).numpy()  # (N, R, R, C) uint8
    if data_spec == FASHION_MNIST or data_spec.startswith(FASHION_MNIST + ":"):
        root = Path(data_spec.split(":", 1)[1]) if ":" in data_spec else DEFAULT_ROOT
        held_out = load_fashion_mnist(root, "test")[0]
    else:
        train, held_out = calibration_split(train)
    index = build_index_from_images(train, held_out)
    return put_index(store, f"{generator_key.rsplit('/', 1)[0]}/{INDEX_FILE_NAME}", index)
