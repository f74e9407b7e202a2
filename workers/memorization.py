"""Loading a model version's memorization index (stored next to its checkpoint) for the worker's gate."""

from __future__ import annotations

import hashlib

from db.errors import StorageError
from db.storage import ObjectStore
from db.tables import ModelVersion
from models.memorization_index import METRICS_KEY, MemorizationIndex
from workers.generator_cache import read_checkpoint

MEMORIZATION_METRICS_KEY = METRICS_KEY


def load_memorization_index(store: ObjectStore, model_version: ModelVersion) -> MemorizationIndex:
    """The index `metrics["memorization_index"]` points at, checked against its recorded sha256."""
    entry = dict((model_version.metrics or {})[METRICS_KEY])
    data = read_checkpoint(store, str(entry["uri"]))
    digest = hashlib.sha256(data).hexdigest()
    if entry.get("sha256") and digest != entry["sha256"]:
        raise StorageError(
            f"memorization index {entry['uri']}: sha256 {digest} is not the recorded {entry['sha256']}"
        )
    return MemorizationIndex.from_bytes(data)
