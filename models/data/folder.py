"""An image folder with one subfolder per category (`root/<category>/<image>`), any size, resized.

Categories are the subfolder names in sorted order. Images are decoded with Pillow, converted to
grayscale or RGB, center-cropped to a square and resized to the preset resolution. An unreadable image,
an empty category or a folder without categories stops with a `DataError` naming the path.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from models.errors import DataError

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"})


def decode_image(data: bytes, name: str, resolution: int, channels: int) -> np.ndarray:
    """Decode one image file's bytes to uint8 (channels, resolution, resolution); `name` is used in errors."""
    try:
        with Image.open(io.BytesIO(data)) as opened:
            image = opened.convert("L" if channels == 1 else "RGB")
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise DataError(f"{name}: unreadable image ({exc})") from exc
    width, height = image.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    image = image.crop((left, top, left + side, top + side)).resize(
        (resolution, resolution), Image.Resampling.LANCZOS
    )
    array = np.asarray(image, dtype=np.uint8)
    return array[None] if channels == 1 else array.transpose(2, 0, 1).copy()  # (C, R, R)


def stack_category_images(
    entries: Iterable[tuple[str, str, bytes]], categories: tuple[str, ...], resolution: int, channels: int
) -> tuple[np.ndarray, np.ndarray]:
    """Decode (category, name, bytes) entries into uint8 images (N, C, R, R) and int64 labels (N,)."""
    index = {category: i for i, category in enumerate(categories)}
    listed = entries_list(entries, index)
    images = [decode_image(data, name, resolution, channels) for _, name, data in listed]
    labels = [index[category] for category, _, _ in listed]
    return np.stack(images), np.asarray(labels, dtype=np.int64)


def entries_list(
    entries: Iterable[tuple[str, str, bytes]], index: dict[str, int]
) -> list[tuple[str, str, bytes]]:
    """The entries as a list, each category checked against `index`."""
    listed = entries if isinstance(entries, list) else list(entries)
    for category, name, _ in listed:
        if category not in index:
            raise DataError(f"{name}: category {category!r} is not one of {sorted(index)}")
    return listed


def list_folder(root: Path) -> tuple[tuple[str, ...], dict[str, list[Path]]]:
    """The categories (sorted subfolder names) and each one's image files; raises `DataError` when empty."""
    if not root.is_dir():
        raise DataError(f"{root}: not a folder (expected one subfolder per category)")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise DataError(f"{root}: no category subfolders")
    files: dict[str, list[Path]] = {}
    for folder in folders:
        found = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not found:
            raise DataError(f"{folder}: empty category (no {', '.join(sorted(IMAGE_SUFFIXES))} files)")
        files[folder.name] = found
    return tuple(files), files


def load_folder(
    root: Path | str, resolution: int, channels: int
) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """Images uint8 (N, C, R, R), labels int64 (N,) and the category names of an image folder."""
    categories, files = list_folder(Path(root))
    entries = []
    for category, paths in files.items():
        for path in paths:
            try:
                data = path.read_bytes()
            except OSError as exc:
                raise DataError(f"{path}: unreadable ({exc})") from exc
            entries.append((category, str(path), data))
    images, labels = stack_category_images(entries, categories, resolution, channels)
    return images, labels, categories


def folder_fingerprint(root: Path | str) -> str:
    """sha256 over every image's relative path and bytes, in sorted order."""
    root = Path(root)
    categories, files = list_folder(root)
    digest = hashlib.sha256()
    for category in categories:
        for path in files[category]:
            digest.update(str(path.relative_to(root)).encode())
            digest.update(path.read_bytes())
    return "sha256:" + digest.hexdigest()
