"""Training data: real Fashion-MNIST, a generated image folder, an object-store prefix, and bad data."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from db.storage import LocalStore, ObjectStore
from models.data import folder
from models.data.dataset import check_dataset, open_dataset
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


# Users bring their own photos: each bound is checked before the work it bounds


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width × height (8-bit RGB) and whose data is one empty zlib stream: Pillow
    reads the size from it without decoding anything."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # Pillow warns at open, then we refuse
@pytest.mark.parametrize("side", [12_000, 40_000])  # over the 89.5 MP limit; over Pillow's own error limit too
def test_an_image_with_too_many_pixels_is_refused_from_its_header(tmp_path: Path, side: int) -> None:
    # Given a 100-byte file that claims side × side pixels (a decompression bomb: 432 MB to 4.8 GB decoded)
    root = _write_folder(tmp_path / "photos", {"a": 2})
    (root / "a" / "bomb.png").write_bytes(_png_header_only(side, side))
    # Then loading stops naming the file and the limit, and nothing was decoded to find out
    with pytest.raises(DataError, match=r"^\S*bomb\.png: (\d+×\d+ is [\d,]+ pixels, over the limit of|Image size .*; the limit is) 89,478,485"):
        open_dataset(str(root), 8, 3)


def test_a_file_over_the_byte_limit_is_refused_when_listed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(folder, "MAX_IMAGE_BYTES", 2_000)
    root = _write_folder(tmp_path / "photos", {"a": 1})
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(root / "a" / "big.png")
    # check_dataset only lists (no image read or decoded): it already names the file, its size and the limit
    with pytest.raises(DataError, match=r"big\.png: [\d,]+ bytes, over the limit of 2,000 bytes per image"):
        check_dataset(str(root))
    with pytest.raises(DataError, match=r"big\.png: [\d,]+ bytes, over the limit of 2,000 bytes"):
        open_dataset(str(root), 8, 3)


def test_a_data_set_too_big_for_memory_is_refused_before_decoding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = _write_folder(tmp_path / "photos", {"a": 2, "b": 2})
    # Given a machine with 4 KiB of memory: 4 images at 3×16×16 are 3 KiB per worker, 6 KiB for two workers
    monkeypatch.setattr(folder, "physical_memory_bytes", lambda: 4096)
    decoded: list[str] = []
    monkeypatch.setattr(folder, "decode_image", lambda *args: decoded.append(args[1]))
    with pytest.raises(DataError, match=r"^4 images at 3×16×16 take 3\.0 KiB per worker, 6\.0 KiB for 2 workers: over 50% of this machine's 4\.0 KiB of memory"):
        check_dataset(str(root), (3, 16, 16), copies=2)
    with pytest.raises(DataError, match=r"over 50% of this machine's"):
        open_dataset(str(root), 32, 3)  # 12 KiB for one worker
    assert decoded == []
    check_dataset(str(root), (1, 8, 8), copies=2)  # 512 bytes fit


def test_threads_decode_the_same_array_and_the_first_bad_file_in_order_is_named(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    entries = []
    for i in range(40):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (30 + i, 20, 3), dtype=np.uint8)).save(buffer, format="PNG")
        entries.append((i % 3, f"img{i}", buffer.getvalue()))
    one = folder.decode_stream(iter(entries), 40, 12, 3, threads=1)
    four = folder.decode_stream(iter(entries), 40, 12, 3, threads=4)
    assert np.array_equal(one[0], four[0]) and one[1].tolist() == four[1].tolist() == [i % 3 for i in range(40)]
    assert np.array_equal(one[0][5], folder.decode_image(entries[5][2], "x", 12, 3))
    broken = [*entries[:10], (0, "first-bad", b"junk"), (0, "second-bad", b"junk"), *entries[10:]]
    with pytest.raises(DataError, match=r"^first-bad: unreadable image"):
        folder.decode_stream(iter(broken), 42, 12, 3, threads=4)
    with pytest.raises(DataError, match=r"39 images read, 40 listed"):
        folder.decode_stream(iter(entries[:39]), 40, 12, 3, threads=2)


def test_a_large_jpeg_decodes_from_its_draft_close_to_a_full_decode(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a 1,600×1,200 photo-like JPEG (smooth gradients and a shape)
    y, x = np.mgrid[0:1200, 0:1600]
    pixels = np.stack([x * 255 // 1600, y * 255 // 1200, ((x - 800) ** 2 + (y - 600) ** 2 < 400**2) * 200], -1)
    buffer = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(buffer, format="JPEG", quality=90)
    drafted = folder.decode_image(buffer.getvalue(), "photo.jpg", 32, 3)
    monkeypatch.setattr(folder, "DRAFT_FACTOR", 1_000)  # a draft this large is the full image
    full = folder.decode_image(buffer.getvalue(), "photo.jpg", 32, 3)
    # Then the 32 px images differ by at most a few gray levels on average
    assert drafted.shape == full.shape == (3, 32, 32)
    assert float(np.abs(drafted.astype(int) - full.astype(int)).mean()) < 2.0


def test_the_folder_fingerprint_is_sha256_over_relative_paths_and_bytes(tmp_path: Path) -> None:
    # The format registered models recorded before the one-pass loader: it must not change
    root = _write_folder(tmp_path / "photos", {"b": 2, "a": 1})
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.png"), key=lambda p: (p.parent.name, p.name)):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    assert open_dataset(str(root), 8, 1).fingerprint == "sha256:" + digest.hexdigest()


def test_an_object_over_the_byte_limit_is_refused_from_the_listing(
    local_store: LocalStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _upload_folder(local_store, _write_folder(tmp_path / "photos", {"hats": 2}, size=(40, 40)))
    monkeypatch.setattr(folder, "MAX_IMAGE_BYTES", 1_000)
    with pytest.raises(DataError, match=r"file://.*hats/000\.png: [\d,]+ bytes, over the limit of 1,000 bytes"):
        check_dataset(local_store.url)
