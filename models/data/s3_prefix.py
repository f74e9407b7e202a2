"""The image-folder layout under an object-store prefix: `s3://bucket/prefix/<category>/<image>`.

The prefix is opened as an object store of its own (`db.storage.open_store`), listed, and every image is
decoded exactly as `models.data.folder` decodes local files. Errors name the object's URI.
"""

from __future__ import annotations

import hashlib
from pathlib import PurePosixPath

import numpy as np

from db.errors import StorageError
from db.storage import ObjectStore, open_store
from models.data.folder import IMAGE_SUFFIXES, stack_category_images
from models.errors import DataError


def list_prefix(store: ObjectStore) -> dict[str, list[str]]:
    """Each category's image keys under the store's root; raises `DataError` when there are none."""
    files: dict[str, list[str]] = {}
    try:
        infos = list(store.list(""))
    except StorageError as exc:
        raise DataError(f"{store.url}: cannot list ({exc})") from exc
    for info in infos:
        parts = PurePosixPath(info.key).parts
        if len(parts) < 2 or PurePosixPath(info.key).suffix.lower() not in IMAGE_SUFFIXES:
            continue
        files.setdefault(parts[0], []).append(info.key)
    if not files:
        raise DataError(f"{store.url}: no images under <category>/ prefixes")
    for category, keys in files.items():
        if not keys:
            raise DataError(f"{store.uri(category)}: empty category")
    return dict(sorted(files.items()))


def load_prefix(
    url: str, resolution: int, channels: int
) -> tuple[np.ndarray, np.ndarray, tuple[str, ...], str]:
    """Images (N, C, R, R) uint8, labels (N,), categories and a fingerprint of the images under `url`."""
    store = open_store(url)
    files = list_prefix(store)
    categories = tuple(files)
    entries = []
    digest = hashlib.sha256()
    for category, keys in files.items():
        for key in sorted(keys):
            try:
                data = store.get(key)
            except StorageError as exc:
                raise DataError(f"{store.uri(key)}: unreadable ({exc})") from exc
            digest.update(key.encode())
            digest.update(data)
            entries.append((category, store.uri(key), data))
    images, labels = stack_category_images(entries, categories, resolution, channels)
    return images, labels, categories, "sha256:" + digest.hexdigest()
