"""Fashion-MNIST from its IDX files (gzipped, as Debian's `dataset-fashion-mnist` ships them).

70,000 28×28 grayscale product photos in 10 categories: 60,000 train, 10,000 test.
"""

from __future__ import annotations

import gzip
import hashlib
import struct
from pathlib import Path
from typing import Literal

import numpy as np

from models.config import FASHION_CATEGORIES
from models.errors import DataError

DEFAULT_ROOT = Path("/usr/share/datasets/fashion-mnist")

# Slugs are used in object keys and on the command line (one list: the presets' `FASHION_CATEGORIES`); the
# display names are Zalando's.
CATEGORIES: tuple[str, ...] = FASHION_CATEGORIES
DISPLAY_NAMES: tuple[str, ...] = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

IDX_IMAGES_MAGIC = 2051
IDX_LABELS_MAGIC = 2049
FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}

Split = Literal["train", "test"]


def _read(path: Path) -> bytes:
    try:
        with gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb") as handle:
            return handle.read()
    except FileNotFoundError as exc:
        raise DataError(
            f"{path}: file not found (install Debian's dataset-fashion-mnist or pass --data with the IDX folder)"
        ) from exc
    except (OSError, EOFError) as exc:
        raise DataError(f"{path}: unreadable ({exc})") from exc


def read_idx_images(path: Path) -> np.ndarray:
    """Read an IDX3 image file into a uint8 array of shape (N, rows, cols)."""
    raw = _read(path)
    if len(raw) < 16:
        raise DataError(f"{path}: too short for an IDX3 header")
    magic, count, rows, cols = struct.unpack(">IIII", raw[:16])
    if magic != IDX_IMAGES_MAGIC:
        raise DataError(f"{path}: bad IDX3 magic {magic} (expected {IDX_IMAGES_MAGIC})")
    expected = count * rows * cols
    if len(raw) - 16 != expected:
        raise DataError(
            f"{path}: header says {count}×{rows}×{cols} = {expected} bytes, file has {len(raw) - 16}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=16).reshape(count, rows, cols)


def read_idx_labels(path: Path) -> np.ndarray:
    """Read an IDX1 label file into an int64 array of shape (N,)."""
    raw = _read(path)
    if len(raw) < 8:
        raise DataError(f"{path}: too short for an IDX1 header")
    magic, count = struct.unpack(">II", raw[:8])
    if magic != IDX_LABELS_MAGIC:
        raise DataError(f"{path}: bad IDX1 magic {magic} (expected {IDX_LABELS_MAGIC})")
    if len(raw) - 8 != count:
        raise DataError(f"{path}: header says {count} labels, file has {len(raw) - 8}")
    return np.frombuffer(raw, dtype=np.uint8, offset=8).astype(np.int64)


def load_fashion_mnist(
    root: Path | str = DEFAULT_ROOT, split: Split = "train"
) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 28, 28) uint8 and labels (N,) int64 of one split; raises `DataError` naming the bad file."""
    root = Path(root)
    image_name, label_name = FILES[split]
    images = read_idx_images(root / image_name)
    labels = read_idx_labels(root / label_name)
    if len(images) != len(labels):
        raise DataError(
            f"{root / label_name}: {len(labels)} labels for {len(images)} images in {root / image_name}"
        )
    if len(labels) and (labels.min() < 0 or labels.max() >= len(CATEGORIES)):
        raise DataError(f"{root / label_name}: labels outside 0..{len(CATEGORIES) - 1}")
    return images, labels


def fingerprint(root: Path | str = DEFAULT_ROOT) -> str:
    """sha256 over the four files' bytes: identifies the exact training data in model cards and the registry."""
    digest = hashlib.sha256()
    for split in ("train", "test"):
        for name in FILES[split]:
            digest.update(_read(Path(root) / name))
    return "sha256:" + digest.hexdigest()
