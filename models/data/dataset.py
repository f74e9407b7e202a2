"""Open a data spec as training data: uint8 images at the preset's resolution, labels, categories, fingerprint.

Specs:  `fashion-mnist` (Debian's files) | `fashion-mnist:/path/to/idx/folder` | a folder path |
`s3://bucket/prefix` (also `file://` object-store URLs). Fashion-MNIST's 28×28 is padded by 2 px of
background to 32×32 (then resized if the preset is not 32 px); folders are center-cropped and resized.
Images stay uint8 in memory (60,000 × 32 × 32 = 61 MB) and become [-1, 1] floats per batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from db.errors import StorageError
from db.storage import open_store
from models.data.fashion_mnist import CATEGORIES, DEFAULT_ROOT, fingerprint, load_fashion_mnist
from models.data.folder import check_memory, list_folder, load_folder
from models.data.s3_prefix import list_prefix, load_prefix
from models.errors import DataError

FASHION_MNIST = "fashion-mnist"
FASHION_MNIST_PAD_PX = 2  # 28 + 2 + 2 = 32


@dataclass(frozen=True)
class TrainingData:
    """A whole data set in memory: uint8 images (N, C, R, R), int64 labels (N,)."""

    images: torch.Tensor
    labels: torch.Tensor
    categories: tuple[str, ...]
    fingerprint: str
    spec: str

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def batch(
        self, indices: torch.Tensor, device: torch.device | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Images as float (B, C, R, R) in [-1, 1] and labels (B,) for the given indices."""
        images = self.images[indices].to(device=device, dtype=torch.float32) / 127.5 - 1.0
        return images, self.labels[indices].to(device)


def fit_fashion_mnist(images: np.ndarray, resolution: int, channels: int) -> torch.Tensor:
    """(N, 28, 28) uint8 → (N, C, R, R) uint8: pad 2 px of black to 32, resize if R ≠ 32, repeat to C channels."""
    tensor = torch.from_numpy(np.array(images, dtype=np.uint8))[:, None]  # (N, 1, 28, 28)
    tensor = F.pad(tensor, (FASHION_MNIST_PAD_PX,) * 4)  # (N, 1, 32, 32)
    if resolution != tensor.shape[-1]:
        resized = F.interpolate(
            tensor.float(), size=(resolution, resolution), mode="area" if resolution < 32 else "bilinear"
        )
        tensor = resized.round().clamp(0, 255).to(torch.uint8)
    return tensor.repeat(1, channels, 1, 1) if channels != 1 else tensor


def check_dataset(spec: str, image_shape: tuple[int, int, int] | None = None, copies: int = 1) -> None:
    """Raise `DataError` when the data a spec names cannot be opened, without decoding any image: Fashion-MNIST's
    four files (train and test) are read (about 0.5 s), a folder or an object-store prefix is listed (each file's size checked).
    With `image_shape` (C, R, R), also when `copies` decoded copies (one per worker on this machine) would not
    fit in memory. `catalogan train` calls it before a local Ray cluster starts, so a bad `--data` costs
    neither the start nor a failed run record."""
    if _is_fashion_mnist(spec):
        root = _fashion_mnist_root(spec)
        count = len(load_fashion_mnist(root, "train")[1])
        # Each rank's data fingerprint reads the test split's two files as well (`fingerprint`): a folder with
        # the train files alone would pass here and then fail in every rank, after Ray has started.
        load_fashion_mnist(root, "test")
    elif "://" in spec:
        try:
            store = open_store(spec)
        except (StorageError, ValueError) as exc:
            raise DataError(f"{spec}: {exc}") from exc
        count = sum(len(keys) for keys in list_prefix(store).values())
    else:
        count = sum(len(paths) for paths in list_folder(_folder(spec))[1].values())
    if image_shape is not None:
        check_memory(count, image_shape, copies)


def open_dataset(spec: str, resolution: int, channels: int) -> TrainingData:
    """Load the data a spec names at the given resolution and channel count; raises `DataError`."""
    if _is_fashion_mnist(spec):
        root = _fashion_mnist_root(spec)
        images, labels = load_fashion_mnist(root, "train")
        return TrainingData(
            fit_fashion_mnist(images, resolution, channels),
            torch.from_numpy(labels),
            CATEGORIES,
            fingerprint(root),
            spec,
        )
    if "://" in spec:
        array, labels, categories, digest = load_prefix(spec, resolution, channels)
        return TrainingData(torch.from_numpy(array), torch.from_numpy(labels), categories, digest, spec)
    path = _folder(spec)
    array, labels, categories, digest = load_folder(path, resolution, channels)
    return TrainingData(torch.from_numpy(array), torch.from_numpy(labels), categories, digest, spec)


def _is_fashion_mnist(spec: str) -> bool:
    return spec == FASHION_MNIST or spec.startswith(FASHION_MNIST + ":")


def _fashion_mnist_root(spec: str) -> Path:
    return Path(spec.split(":", 1)[1]) if ":" in spec else DEFAULT_ROOT


def _folder(spec: str) -> Path:
    path = Path(spec).expanduser()
    if not path.exists():
        raise DataError(
            f"{spec}: no such folder (use fashion-mnist[:/path], a folder, or s3://bucket/prefix)"
        )
    return path
