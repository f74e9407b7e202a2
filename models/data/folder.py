"""An image folder with one subfolder per category (`root/<category>/<image>`), any size, resized.

Categories are the subfolder names in sorted order. Images are decoded with Pillow, converted to
grayscale or RGB, center-cropped to a square and resized to the preset resolution. An unreadable image,
an empty category or a folder without categories stops with a `DataError` naming the path.

Users bring their own photos, so every bound is checked before the work it bounds: a file's size from the
listing before it is read (`MAX_IMAGE_BYTES`), its pixel count from its header before it is decoded
(`MAX_IMAGE_PIXELS`), and the decoded data set's size before any image is (`check_memory`). Files are read
and decoded as a stream into one preallocated array by a few threads (Pillow decodes and resizes without the
GIL), so memory holds the resized data set plus a small window of files, never every file's bytes at once.
A JPEG is decoded at a reduced scale (`draft`) that still leaves its shorter side at least twice the
resolution, before the same LANCZOS resize.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from models.errors import DataError

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
MAX_IMAGE_BYTES = 64 << 20  # one source file; a 100-megapixel JPEG is about 30 MB
MAX_IMAGE_PIXELS = 89_478_485  # one source image (width × height): Pillow's default, above which it warns of a bomb
MEMORY_FRACTION = 0.5  # the decoded data sets of one node's workers may take at most this share of its memory
DECODE_THREADS = max(1, min(8, os.cpu_count() or 1))
DRAFT_FACTOR = 2  # a JPEG's draft keeps its shorter side ≥ this × the resolution


def decode_image(data: bytes, name: str, resolution: int, channels: int) -> np.ndarray:
    """Decode one image file's bytes to uint8 (channels, resolution, resolution); `name` is used in errors.

    The pixel count is checked from the header, before anything is decoded."""
    mode = "L" if channels == 1 else "RGB"
    try:
        opened = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:  # Pillow's own check at open, at twice the limit below
        raise DataError(f"{name}: {str(exc).rstrip('.')}; the limit is {MAX_IMAGE_PIXELS:,} pixels") from exc
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise DataError(f"{name}: unreadable image ({exc})") from exc
    with opened:
        width, height = opened.size
        if width * height > MAX_IMAGE_PIXELS:
            raise DataError(
                f"{name}: {width}×{height} is {width * height:,} pixels, over the limit of {MAX_IMAGE_PIXELS:,}"
            )
        try:
            opened.draft(mode, (DRAFT_FACTOR * resolution, DRAFT_FACTOR * resolution))  # JPEG only
            image = opened.convert(mode)
        except (OSError, ValueError) as exc:
            raise DataError(f"{name}: unreadable image ({exc})") from exc
    width, height = image.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    image = image.crop((left, top, left + side, top + side)).resize(
        (resolution, resolution), Image.Resampling.LANCZOS
    )
    array = np.asarray(image, dtype=np.uint8)
    return array[None] if channels == 1 else array.transpose(2, 0, 1)  # (C, R, R)


def check_file_size(name: str, size_bytes: int) -> None:
    """Raise `DataError` when one source file is larger than `MAX_IMAGE_BYTES` (checked before it is read)."""
    if size_bytes > MAX_IMAGE_BYTES:
        raise DataError(f"{name}: {size_bytes:,} bytes, over the limit of {MAX_IMAGE_BYTES:,} bytes per image")


def physical_memory_bytes() -> int:
    """This machine's memory (0 when the platform does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return 0


def size_text(size_bytes: float) -> str:
    """1536 → '1.5 KiB'."""
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if size_bytes < 1024 or unit == "GiB":
            return f"{size_bytes:,.0f} bytes" if unit == "bytes" else f"{size_bytes:,.1f} {unit}"
        size_bytes /= 1024
    raise AssertionError("unreachable")


def check_memory(count: int, image_shape: tuple[int, int, int], copies: int = 1) -> None:
    """Raise `DataError` when `copies` decoded data sets of `count` images would take more than
    `MEMORY_FRACTION` of this machine's memory (each training worker holds its own copy)."""
    each = count * int(np.prod(image_shape))
    memory = physical_memory_bytes()
    if memory and each * copies > MEMORY_FRACTION * memory:
        channels, height, width = image_shape
        workers = f", {size_text(each * copies)} for {copies} workers" if copies > 1 else ""
        raise DataError(
            f"{count:,} images at {channels}×{height}×{width} take {size_text(each)} per worker{workers}: "
            f"over {MEMORY_FRACTION:.0%} of this machine's {size_text(memory)} of memory "
            "(train on fewer images, a smaller preset or fewer workers per machine)"
        )


def decode_stream(
    entries: Iterable[tuple[int, str, bytes]],
    count: int,
    resolution: int,
    channels: int,
    *,
    threads: int = DECODE_THREADS,
) -> tuple[np.ndarray, np.ndarray]:
    """Decode `count` (label, name, bytes) entries into uint8 images (N, C, R, R) and int64 labels (N,).

    Up to `threads` images decode at once and at most twice that many files' bytes are held; the first
    error in entry order is raised."""
    images = np.empty((count, channels, resolution, resolution), dtype=np.uint8)
    labels = np.empty(count, dtype=np.int64)
    window: deque[tuple[int, Future[np.ndarray]]] = deque()
    filled = 0
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="decode") as pool:
        try:
            for label, name, data in entries:
                if filled == count:
                    raise DataError(f"{name}: more images than the {count:,} listed")
                labels[filled] = label
                window.append((filled, pool.submit(decode_image, data, name, resolution, channels)))
                filled += 1
                if len(window) >= 2 * threads:
                    index, future = window.popleft()
                    images[index] = future.result()
            while window:
                index, future = window.popleft()
                images[index] = future.result()
        finally:
            for _, future in window:
                future.cancel()
    if filled != count:
        raise DataError(f"{filled:,} images read, {count:,} listed (did the images change while loading?)")
    return images, labels


def list_folder(root: Path) -> tuple[tuple[str, ...], dict[str, list[Path]]]:
    """The categories (sorted subfolder names) and each one's image files, every file's size checked;
    raises `DataError` when empty."""
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
        for path in found:
            check_file_size(str(path), path.stat().st_size)
        files[folder.name] = found
    return tuple(files), files


def fingerprinted(
    items: Iterable[tuple[int, str, str, bytes]], update: Callable[[bytes], object]
) -> Iterator[tuple[int, str, bytes]]:
    """(label, name, bytes) for each (label, name, fingerprint key, bytes), the key and the bytes passed to
    `update` (a sha256's) in order; bytes over `MAX_IMAGE_BYTES` (a file grown since it was listed) are refused."""
    for label, name, key, data in items:
        check_file_size(name, len(data))
        update(key.encode())
        update(data)
        yield label, name, data


def load_folder(
    root: Path | str, resolution: int, channels: int
) -> tuple[np.ndarray, np.ndarray, tuple[str, ...], str]:
    """Images uint8 (N, C, R, R), labels int64 (N,), the category names and the fingerprint of an image
    folder (sha256 over every image's relative path and bytes, in sorted order), in one pass."""
    root = Path(root)
    categories, files = list_folder(root)
    count = sum(len(paths) for paths in files.values())
    check_memory(count, (channels, resolution, resolution))

    def read() -> Iterator[tuple[int, str, str, bytes]]:
        for label, category in enumerate(categories):
            for path in files[category]:
                try:
                    data = path.read_bytes()
                except OSError as exc:
                    raise DataError(f"{path}: unreadable ({exc})") from exc
                yield label, str(path), str(path.relative_to(root)), data

    digest = hashlib.sha256()
    images, labels = decode_stream(fingerprinted(read(), digest.update), count, resolution, channels)
    return images, labels, categories, "sha256:" + digest.hexdigest()
