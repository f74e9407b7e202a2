"""The image-folder layout under an object-store prefix: `s3://bucket/prefix/<category>/<image>`.

The prefix is opened as an object store of its own (`db.storage.open_store`), listed, and every image is
decoded exactly as `models.data.folder` decodes local files: each object's size checked from the listing
before it is read, the decoded data set's size before any image is, objects read 8 at a time and decoded as
they arrive. Errors name the object's URI.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import PurePosixPath

import numpy as np

from db.errors import StorageError
from db.storage import ObjectStore, open_store
from models.data.folder import IMAGE_SUFFIXES, check_file_size, check_memory, decode_stream, fingerprinted
from models.errors import DataError

READS_IN_FLIGHT = 8


def list_prefix(store: ObjectStore) -> dict[str, list[str]]:
    """Each category's image keys (sorted) under the store's root, every object's size checked; raises
    `DataError` when there are none."""
    files: dict[str, list[str]] = {}
    try:
        infos = list(store.list(""))
    except StorageError as exc:
        raise DataError(f"{store.url}: cannot list ({exc})") from exc
    for info in infos:
        parts = PurePosixPath(info.key).parts
        if len(parts) < 2 or PurePosixPath(info.key).suffix.lower() not in IMAGE_SUFFIXES:
            continue
        check_file_size(store.uri(info.key), info.size_bytes)
        files.setdefault(parts[0], []).append(info.key)
    if not files:
        raise DataError(f"{store.url}: no images under <category>/ prefixes")
    return {category: sorted(keys) for category, keys in sorted(files.items())}


def load_prefix(
    url: str, resolution: int, channels: int
) -> tuple[np.ndarray, np.ndarray, tuple[str, ...], str]:
    """Images (N, C, R, R) uint8, labels (N,), categories and a fingerprint of the images under `url`
    (sha256 over every key and its bytes, in sorted order)."""
    store = open_store(url)
    files = list_prefix(store)
    categories = tuple(files)
    labelled = [(label, key) for label, category in enumerate(categories) for key in files[category]]
    check_memory(len(labelled), (channels, resolution, resolution))

    def read() -> Iterator[tuple[int, str, str, bytes]]:
        pairs = store.get_many([key for _, key in labelled], in_flight=READS_IN_FLIGHT)  # in key order
        for label, key in labelled:
            try:
                _, data = next(pairs)
            except StorageError as exc:
                raise DataError(f"{store.uri(key)}: unreadable ({exc})") from exc
            yield label, store.uri(key), key, data

    digest = hashlib.sha256()
    images, labels = decode_stream(
        fingerprinted(read(), digest.update), len(labelled), resolution, channels
    )
    return images, labels, categories, "sha256:" + digest.hexdigest()
