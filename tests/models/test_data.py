"""Training data: real Fashion-MNIST, a generated image folder, an object-store prefix, and bad data."""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from db.storage import LocalStore, ObjectStore
from models.data.dataset import open_dataset
from models.data.fashion_mnist import CATEGORIES, DEFAULT_ROOT
from models.errors import DataError
from models.training import batch_indices, rank_shard


def _write_folder(root: Path, counts: dict[str, int], size: tuple[int, int] = (20, 14)) -> Path:
    rng = np.random.default_rng(1)
    for category, count in counts.items():
        (root / category).mkdir(parents=True)
        for i in range(count):
            Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(
                root / category / f"{i:03d}.png"
            )
    return root


def test_fashion_mnist_is_padded_to_32_px_in_minus_one_to_one() -> None:
    if not (DEFAULT_ROOT / "train-images-idx3-ubyte.gz").exists():
        if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
            pytest.fail(f"Fashion-MNIST is missing at {DEFAULT_ROOT} (CI installs dataset-fashion-mnist)")
        pytest.skip(f"Fashion-MNIST is not installed at {DEFAULT_ROOT}")
    # Given Debian's Fashion-MNIST files, When opened for a 32 px gray preset
    data = open_dataset("fashion-mnist", resolution=32, channels=1)
    # Then all 60,000 train images are there, padded by 2 px of background, with their labels and categories
    assert len(data) == 60_000 and data.images.shape == (60_000, 1, 32, 32)
    assert data.categories == CATEGORIES
    assert int(data.images[:, :, :2].max()) == 0 and int(data.images[:, :, -2:].max()) == 0
    images, labels = data.batch(torch.arange(8))
    assert images.dtype == torch.float32 and float(images.min()) == -1.0 and float(images.max()) <= 1.0
    assert labels.tolist() == data.labels[:8].tolist()
    assert data.fingerprint.startswith("sha256:")


def test_an_image_folder_gives_sorted_categories_at_the_preset_size(tmp_path: Path) -> None:
    root = _write_folder(tmp_path / "photos", {"shoes": 3, "bags": 2})
    data = open_dataset(str(root), resolution=16, channels=3)
    assert data.categories == ("bags", "shoes")
    assert data.images.shape == (5, 3, 16, 16) and data.images.dtype == torch.uint8
    assert data.labels.tolist() == [0, 0, 1, 1, 1]
    # The fingerprint changes when an image does
    before = data.fingerprint
    Image.new("RGB", (5, 5)).save(root / "bags" / "000.png")
    assert open_dataset(str(root), 16, 3).fingerprint != before


def _upload_folder(store: ObjectStore, root: Path) -> None:
    for path in sorted(root.rglob("*.png")):
        store.put(str(path.relative_to(root)), path.read_bytes(), content_type="image/png")


def test_a_file_store_prefix_reads_like_a_folder(local_store: LocalStore, tmp_path: Path) -> None:
    _upload_folder(local_store, _write_folder(tmp_path / "photos", {"hats": 2, "socks": 1}))
    data = open_dataset(local_store.url, resolution=8, channels=1)
    assert data.categories == ("hats", "socks") and data.images.shape == (3, 1, 8, 8)


def test_an_s3_prefix_reads_like_a_folder(s3_store: ObjectStore, tmp_path: Path) -> None:
    # Given the folder layout uploaded under an S3 prefix (SeaweedFS)
    _upload_folder(s3_store, _write_folder(tmp_path / "photos", {"hats": 2, "socks": 1}))
    (tmp_path / "bad.png").write_bytes(b"garbage")
    s3_store.put("socks/bad.png", b"garbage")
    # Then a broken object is named by its s3:// URI
    with pytest.raises(DataError, match=r"s3://.*socks/bad\.png: unreadable image"):
        open_dataset(s3_store.url, resolution=8, channels=1)
    s3_store.delete("socks/bad.png")
    data = open_dataset(s3_store.url, resolution=8, channels=1)
    assert data.categories == ("hats", "socks") and data.images.shape == (3, 1, 8, 8)


def test_an_unreadable_image_is_named(tmp_path: Path) -> None:
    root = _write_folder(tmp_path / "photos", {"a": 2})
    (root / "a" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"broken\.png: unreadable image"):
        open_dataset(str(root), 8, 1)


def test_an_empty_category_is_named(tmp_path: Path) -> None:
    root = _write_folder(tmp_path / "photos", {"a": 2})
    (root / "empty").mkdir()
    with pytest.raises(DataError, match=r"empty: empty category"):
        open_dataset(str(root), 8, 1)


def test_a_missing_folder_and_a_folder_without_categories_are_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such folder"):
        open_dataset(str(tmp_path / "nope"), 8, 1)
    (tmp_path / "flat").mkdir()
    with pytest.raises(DataError, match="no category subfolders"):
        open_dataset(str(tmp_path / "flat"), 8, 1)


def test_label_and_image_count_mismatch_names_the_label_file(tmp_path: Path) -> None:
    # Given IDX files with 3 images but 2 labels
    with gzip.open(tmp_path / "train-images-idx3-ubyte.gz", "wb") as f:
        f.write(struct.pack(">IIII", 2051, 3, 28, 28) + bytes(3 * 28 * 28))
    with gzip.open(tmp_path / "train-labels-idx1-ubyte.gz", "wb") as f:
        f.write(struct.pack(">II", 2049, 2) + bytes([0, 1]))
    # Then opening them fails naming the label file
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte\.gz: 2 labels for 3 images"):
        open_dataset(f"fashion-mnist:{tmp_path}", 32, 1)


def test_batches_cover_each_epoch_once_and_ranks_get_disjoint_shards() -> None:
    # One epoch of 10 items in global batches of 5: every index exactly once, and the same order every time
    epoch = torch.cat([batch_indices(7, step, 10, 5) for step in range(2)])
    assert sorted(epoch.tolist()) == list(range(10))
    assert torch.equal(batch_indices(7, 1, 10, 5), batch_indices(7, 1, 10, 5))
    assert not torch.equal(batch_indices(7, 2, 10, 5), batch_indices(8, 2, 10, 5))
    shards = [rank_shard(batch_indices(7, 0, 10, 4), rank, 2) for rank in range(2)]
    assert set(shards[0].tolist()).isdisjoint(shards[1].tolist())
